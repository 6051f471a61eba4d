//! Soft Q-learning from a fixed dataset of transitions `(s, a, r, s', done)`.
//!
//! Fitted soft Q iteration regresses `Q(s,a)` onto the targets
//! `y = r + gamma * (1 - done) * V(s')`, `V(s') = alpha * log sum_a' exp(Q(s',a') / alpha)`
//! (`max_a' Q(s',a')` at alpha = 0: Q-learning). For a tabular Q the least-squares minimiser
//! is the mean target over the samples of `(s,a)`:
//! `Q(s,a) = mean r + gamma * sum_s' N(s,a,s',not done) / N(s,a) * V(s')`, which is the soft
//! Bellman backup of the *empirical MDP*: transitions `N(s,a,s')/N(s,a)`, mean rewards, and
//! done transitions stepping into an absorbing state of value 0. So iterating the fit to its
//! fixed point is soft value iteration on that MDP, and [`qlearn`] builds it
//! ([`empirical_mdp`]) and solves it with any [`MdpSolver`] on the existing CSR kernels.
//!
//! Pairs the data never shows have no target: their Q is unknown, not 0, so they are left
//! out of the soft max (reward -inf in the empirical MDP: Q = -inf, policy 0; reported NaN).
//! A state with no seen action has no value (NaN); a transition into it bootstraps 0, as a
//! done one does, because the data says nothing of what follows it and an excluded value
//! (-inf) would make every path into it infinitely bad.

use crate::engine::options::{Outputs, SolveOptions};
use crate::engine::schedule::OnProgress;
use crate::engine::solution::Status;
use crate::engine::solver::MdpSolver;
use crate::error::{Context, Result, bail, ensure};
use crate::io::npy::NpyValues;
use crate::world::mdp::{TabularMdp, Transitions, uniform_start};
use std::collections::HashMap;
use std::path::Path;

/// Marks a padding entry of a [`Dataset`] (`s`, `a` and `s_next` all -1): what `softvi sample`
/// writes after an episode ended, so that B datasets of different lengths share `[B,N]`.
pub const NO_SAMPLE: i64 = -1;

/// B datasets of transitions over S states and A actions, `[dataset][entry]` each.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// States S.
    pub states: usize,
    /// Actions A.
    pub actions: usize,
    /// Datasets B (one task each).
    pub datasets: usize,
    /// Entries N per dataset, padding included.
    pub length: usize,
    /// State of each entry, `[dataset][entry]`; [`NO_SAMPLE`] on padding.
    pub s: Vec<i64>,
    /// Action, `[dataset][entry]`; [`NO_SAMPLE`] on padding.
    pub a: Vec<i64>,
    /// Reward (value units), `[dataset][entry]`; ignored on padding.
    pub r: Vec<f64>,
    /// Successor state, `[dataset][entry]`; [`NO_SAMPLE`] on padding.
    pub s_next: Vec<i64>,
    /// Whether the transition ended the episode (no bootstrap from `s_next`),
    /// `[dataset][entry]`.
    pub done: Vec<bool>,
}

impl Dataset {
    /// Reads and validates an `.npz` holding `s`, `a`, `r`, `s_next` (`[N]` or `[B,N]`, any
    /// numeric dtype) and an optional `done` (0/1, same shape; all 0 when missing).
    pub fn load_npz(path: &Path, states: usize, actions: usize) -> Result<Self> {
        let arrays = crate::io::npy::read_npz(path, "dataset file")?;
        Self::from_arrays(&arrays, states, actions)
            .with_context(|| format!("invalid dataset file {}", path.display()))
    }

    /// Builds and validates a dataset from named arrays (the entries of an `.npz`); errors name
    /// the array and the index of the first bad entry.
    pub fn from_arrays(
        arrays: &HashMap<String, NpyValues>,
        states: usize,
        actions: usize,
    ) -> Result<Self> {
        let get = |name: &str| {
            arrays.get(name).with_context(|| {
                format!("missing array {name:?} (a dataset holds s, a, r, s_next, optional done)")
            })
        };
        let s = get("s")?;
        let (datasets, length) = match s.shape[..] {
            [n] => (1, n),
            [b, n] => (b, n),
            _ => bail!("s has shape {:?}; expected [N] or [B,N]", s.shape),
        };
        let mut named = vec![("s", s), ("a", get("a")?), ("r", get("r")?)];
        named.push(("s_next", get("s_next")?));
        if let Some(done) = arrays.get("done") {
            named.push(("done", done));
        }
        for (name, array) in &named {
            ensure!(
                array.shape == s.shape,
                "{name} has shape {:?}, s {:?}; they must match",
                array.shape,
                s.shape
            );
            ensure!(
                array.data.len() == datasets * length,
                "{name} has shape {:?} but holds {} entries",
                array.shape,
                array.data.len()
            );
        }
        let at = |i: usize| entry_label(datasets, length, i);
        let integers = |name: &str, array: &NpyValues| -> Result<Vec<i64>> {
            if let Some(i) = array.data.iter().position(|x| x.fract() != 0.0) {
                bail!("{name}[{}] = {} is not an integer", at(i), array.data[i]);
            }
            // `as i64` saturates: a uint64 2^64 - 1 would be reported as 2^63 - 1.
            const PAST_I64: f64 = 9_223_372_036_854_775_808.0;
            if let Some(i) = array.data.iter().position(|x| x.abs() >= PAST_I64) {
                bail!(
                    "{name}[{}] = {:e} is past int64 (no state or action is that large)",
                    at(i),
                    array.data[i]
                );
            }
            Ok(array.data.iter().map(|&x| x as i64).collect())
        };
        let done = match arrays.get("done") {
            None => vec![false; datasets * length],
            Some(d) => {
                if let Some(i) = d.data.iter().position(|&x| x != 0.0 && x != 1.0) {
                    bail!("done[{}] = {} is not 0 or 1", at(i), d.data[i]);
                }
                d.data.iter().map(|&x| x == 1.0).collect()
            }
        };
        let data = Self {
            states,
            actions,
            datasets,
            length,
            s: integers("s", s)?,
            a: integers("a", named[1].1)?,
            r: named[2].1.data.clone(),
            s_next: integers("s_next", named[3].1)?,
            done,
        };
        data.validate()?;
        Ok(data)
    }

    /// Checks the sizes and every entry: states in `0..S`, actions in `0..A`, finite rewards,
    /// padding whole (`s`, `a`, `s_next` all [`NO_SAMPLE`]) and at least one sample per
    /// dataset; errors name the array and the entry (`[n]`, or `[b, n]` for several datasets).
    pub fn validate(&self) -> Result<()> {
        let (s_n, a_n) = (self.states, self.actions);
        ensure!(s_n > 0, "the dataset has no state (states = 0)");
        ensure!(a_n > 0, "the dataset has no action (actions = 0)");
        ensure!(
            u32::try_from(s_n).is_ok() && u32::try_from(a_n).is_ok(),
            "{s_n} states x {a_n} actions do not fit u32 indices"
        );
        ensure!(
            self.datasets > 0 && self.length > 0,
            "the dataset is empty (shape [{}, {}])",
            self.datasets,
            self.length
        );
        let total = self.datasets * self.length;
        for (name, len) in [
            ("s", self.s.len()),
            ("a", self.a.len()),
            ("r", self.r.len()),
            ("s_next", self.s_next.len()),
            ("done", self.done.len()),
        ] {
            ensure!(
                len == total,
                "{name} holds {len} entries, not B x N = {} x {} = {total}",
                self.datasets,
                self.length
            );
        }
        let at = |i: usize| entry_label(self.datasets, self.length, i);
        for i in 0..total {
            let (s, a, next) = (self.s[i], self.a[i], self.s_next[i]);
            if s == NO_SAMPLE {
                ensure!(
                    a == NO_SAMPLE && next == NO_SAMPLE,
                    "s[{0}] = -1 marks no sample, but a[{0}] = {a} and s_next[{0}] = {next} (a \
                     padding entry has s = a = s_next = -1)",
                    at(i)
                );
                continue;
            }
            ensure!(
                (0..s_n as i64).contains(&s),
                "s[{}] = {s} is not a state (states = {s_n})",
                at(i)
            );
            ensure!(
                (0..a_n as i64).contains(&a),
                "a[{}] = {a} is not an action (actions = {a_n})",
                at(i)
            );
            ensure!(
                (0..s_n as i64).contains(&next),
                "s_next[{}] = {next} is not a state (states = {s_n})",
                at(i)
            );
            ensure!(
                self.r[i].is_finite(),
                "r[{}] = {} is not finite",
                at(i),
                self.r[i]
            );
            ensure!(
                self.r[i].abs() <= f32::MAX as f64,
                "r[{}] = {:e} exceeds float32's range (|r| <= {:e}, what the solvers hold): \
                 scale the rewards down",
                at(i),
                self.r[i],
                f32::MAX
            );
        }
        if let Some(b) = (0..self.datasets).find(|&b| self.samples(b) == 0) {
            bail!("dataset {b} holds no sample (every entry is padding, s = -1)");
        }
        Ok(())
    }

    /// Checks that every sample's state and successor is a free cell of a grid (`free`,
    /// `[row][col]`, `width` columns): data recorded on another map puts samples on walls.
    pub fn check_free_cells(&self, free: &[bool], width: usize) -> Result<()> {
        ensure!(
            free.len() == self.states,
            "the map has {} cells, the dataset {} states",
            free.len(),
            self.states
        );
        let at = |i: usize| entry_label(self.datasets, self.length, i);
        for i in 0..self.s.len() {
            for (name, x) in [("s", self.s[i]), ("s_next", self.s_next[i])] {
                if x != NO_SAMPLE && !free[x as usize] {
                    bail!(
                        "{name}[{}] = {x} is the wall cell X={},Y={} of the map: the data was \
                         not recorded on this map",
                        at(i),
                        x as usize % width,
                        x as usize / width
                    );
                }
            }
        }
        Ok(())
    }

    /// The dataset as `.npz` bytes, as [`Dataset::load_npz`] reads them: `s`, `a`, `s_next`
    /// int32 and `r` float64 of shape `[B,N]`, `done` bool.
    pub fn encode_npz(&self) -> Result<Vec<u8>> {
        use crate::io::npy::encode;
        let shape = [self.datasets, self.length];
        let wide = |x: &[i64]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let done: Vec<f64> = self.done.iter().map(|&d| d as u8 as f64).collect();
        crate::io::npy::encode_npz(&[
            ("s", encode("<i4", &shape, &wide(&self.s))),
            ("a", encode("<i4", &shape, &wide(&self.a))),
            ("r", encode("<f8", &shape, &self.r)),
            ("s_next", encode("<i4", &shape, &wide(&self.s_next))),
            ("done", encode("|b1", &shape, &done)),
        ])
    }

    /// Samples (non-padding entries) of dataset `b`.
    pub fn samples(&self, b: usize) -> usize {
        self.s[b * self.length..(b + 1) * self.length]
            .iter()
            .filter(|&&s| s != NO_SAMPLE)
            .count()
    }
}

/// Entry `i` of `[B,N]` arrays as the user indexes it: `n`, or `b, n` for several datasets.
fn entry_label(datasets: usize, length: usize, i: usize) -> String {
    if datasets == 1 {
        i.to_string()
    } else {
        format!("{}, {}", i / length, i % length)
    }
}

/// The empirical MDP of a [`Dataset`]: the B datasets side by side as one task whose states
/// are `b * S + s` (block-diagonal transitions: the datasets' supports differ, and a
/// [`TabularMdp`]'s tasks share one CSR), plus one absorbing terminal state of value 0 at
/// `B * S`, the successor of every done transition.
#[derive(Clone, Debug)]
pub struct EmpiricalMdp {
    /// One task over `B * S + 1` states and A actions: `P(s'|s,a) = N(s,a,s')/N(s,a)`,
    /// `R(s,a)` the mean reward; unseen pairs step into the sink at reward -inf (excluded);
    /// states with no seen action and the sink are terminal, of value 0.
    pub mdp: TabularMdp,
    /// Datasets B.
    pub datasets: usize,
    /// States S per dataset.
    pub states: usize,
    /// Actions A.
    pub actions: usize,
    /// `N(s,a)`, `[dataset][state][action]`.
    pub counts: Vec<u64>,
}

impl EmpiricalMdp {
    /// The absorbing state of done transitions.
    pub fn sink(&self) -> usize {
        self.datasets * self.states
    }

    /// Whether state `s` of dataset `b` has a seen action (and so a value).
    pub fn has_data(&self, b: usize, s: usize) -> bool {
        let row = (b * self.states + s) * self.actions;
        self.counts[row..row + self.actions].iter().any(|&n| n > 0)
    }
}

/// Host bytes [`empirical_mdp`] holds while it builds the MDP of `data`, saturating: per
/// (state, action) row of the `B * S + 1` states its count, reward sum, mean reward, CSR
/// pointer and two bucket offsets (8 + 8 + 4 + 4 + 8 + 8); per state its terminal flag,
/// terminal value, start probability (and the f64 start it is made from) and reachability;
/// per sample its row, successor and CSR entry (8 + 4 + 4 + 4) and the reverse edge (4).
pub fn empirical_bytes(data: &Dataset) -> u64 {
    let states = (data.datasets as u128)
        .saturating_mul(data.states as u128)
        .saturating_add(1);
    let rows = states.saturating_mul(data.actions as u128);
    let samples = data.s.len() as u128;
    let bytes = rows
        .saturating_mul(40)
        .saturating_add(states.saturating_mul(1 + 4 + 4 + 8 + 1 + 8))
        .saturating_add(samples.saturating_add(rows).saturating_mul(24));
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// Builds the empirical MDP of `data` (see [`EmpiricalMdp`]); sums in f64, probabilities and
/// mean rewards rounded to f32 once. Refuses with `LimitExceeded` before building when
/// [`empirical_bytes`] does not fit the host's memory.
pub fn empirical_mdp(data: &Dataset) -> Result<EmpiricalMdp> {
    data.validate()?;
    crate::engine::memory::ensure_fits(empirical_bytes(data), || {
        format!(
            "the empirical MDP of {} dataset(s) x {} states x {} actions",
            data.datasets, data.states, data.actions
        )
    })?;
    let (s_n, a_n, b_n) = (data.states, data.actions, data.datasets);
    let states = b_n
        .checked_mul(s_n)
        .and_then(|x| x.checked_add(1))
        .filter(|&x| u32::try_from(x).is_ok())
        .with_context(|| format!("{b_n} datasets x {s_n} states do not fit u32 indices"))?;
    let sink = states - 1;
    let rows = states * a_n;
    // Each sample's row and successor, bucketed by row (a counting sort), then run-length
    // encoded per row: O(N) whatever the order of the data.
    let mut counts = vec![0u64; rows];
    let mut reward_sum = vec![0f64; rows];
    let mut sample_row = Vec::with_capacity(data.s.len());
    for i in 0..data.s.len() {
        if data.s[i] == NO_SAMPLE {
            continue;
        }
        let b = i / data.length;
        let row = (b * s_n + data.s[i] as usize) * a_n + data.a[i] as usize;
        let next = if data.done[i] {
            sink
        } else {
            b * s_n + data.s_next[i] as usize
        };
        counts[row] += 1;
        reward_sum[row] += data.r[i];
        sample_row.push((row as u32, next as u32));
    }
    let mut start = vec![0usize; rows + 1];
    for row in 0..rows {
        start[row + 1] = start[row] + counts[row] as usize;
    }
    let mut slot = start.clone();
    let mut successors = vec![0u32; sample_row.len()];
    for &(row, next) in &sample_row {
        successors[slot[row as usize]] = next;
        slot[row as usize] += 1;
    }
    drop(sample_row);
    let (mut indptr, mut indices, mut probs) = (vec![0u32], Vec::new(), Vec::new());
    let mut reward = vec![0f64; rows];
    for row in 0..rows {
        let n = counts[row];
        let bucket = &mut successors[start[row]..start[row + 1]];
        if row / a_n == sink {
            indices.push(sink as u32);
            probs.push(1.0);
        } else if n == 0 {
            // Unseen: excluded from the soft max; the row itself is never weighed.
            indices.push(sink as u32);
            probs.push(1.0);
            reward[row] = f64::NEG_INFINITY;
        } else {
            bucket.sort_unstable();
            let mut k = 0;
            while k < bucket.len() {
                let run = bucket[k..].iter().take_while(|&&j| j == bucket[k]).count();
                indices.push(bucket[k]);
                probs.push(run as f64 / n as f64);
                k += run;
            }
            reward[row] = reward_sum[row] / n as f64;
        }
        ensure!(
            indices.len() < u32::MAX as usize,
            "the empirical MDP has over 2^32 transitions"
        );
        indptr.push(indices.len() as u32);
    }
    let mut terminal: Vec<bool> = (0..states)
        .map(|s| counts[s * a_n..(s + 1) * a_n].iter().all(|&n| n == 0))
        .collect();
    terminal[sink] = true;
    let initial = uniform_start(&terminal);
    let mdp = TabularMdp {
        states,
        actions: a_n,
        tasks: 1,
        transitions: Transitions::sparse(indptr, indices, probs),
        reward,
        terminal,
        terminal_value: vec![0.0; states],
        initial,
    };
    mdp.validate()
        .context("the empirical MDP (a softvi bug: report it)")?;
    counts.truncate(b_n * s_n * a_n);
    Ok(EmpiricalMdp {
        mdp,
        datasets: b_n,
        states: s_n,
        actions: a_n,
        counts,
    })
}

/// Refuses, for an undiscounted solve without horizon, data in which some state with a seen
/// action reaches no `done` transition: the soft values there have no finite fixed point
/// (they grow without bound, or are -inf with Q NaN on seen pairs), as `solve --mdp` refuses
/// such a world. The error names the first such state.
fn check_ends_reachable(empirical: &EmpiricalMdp) -> Result<()> {
    let mdp = &empirical.mdp;
    let (n, a_n) = (mdp.states, mdp.actions);
    // Reverse edges of the seen transitions, CSR by successor.
    let mut start = vec![0usize; n + 1];
    let seen = |row: usize| mdp.reward[row] != f64::NEG_INFINITY && row / a_n != empirical.sink();
    for row in (0..n * a_n).filter(|&r| seen(r)) {
        for k in mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize {
            start[mdp.csr().indices[k] as usize + 1] += 1;
        }
    }
    for j in 0..n {
        start[j + 1] += start[j];
    }
    let mut from = vec![0u32; start[n]];
    let mut slot = start.clone();
    for row in (0..n * a_n).filter(|&r| seen(r)) {
        for k in mdp.csr().indptr[row] as usize..mdp.csr().indptr[row + 1] as usize {
            let j = mdp.csr().indices[k] as usize;
            from[slot[j]] = (row / a_n) as u32;
            slot[j] += 1;
        }
    }
    // The ends: the sink of done transitions and the states without data (terminal, 0).
    let mut reached = mdp.terminal.clone();
    let mut stack: Vec<usize> = (0..n).filter(|&j| reached[j]).collect();
    while let Some(j) = stack.pop() {
        for &s in &from[start[j]..start[j + 1]] {
            if !reached[s as usize] {
                reached[s as usize] = true;
                stack.push(s as usize);
            }
        }
    }
    let s_n = empirical.states;
    let stuck: Vec<usize> = (0..empirical.datasets * s_n)
        .filter(|&x| !reached[x] && empirical.has_data(x / s_n, x % s_n))
        .collect();
    if let Some(&x) = stuck.first() {
        let which = match empirical.datasets {
            1 => format!("state {x}"),
            _ => format!("state {} of dataset {}", x % s_n, x / s_n),
        };
        bail!(
            "with gamma = 1 and no horizon, {} state(s) with data reach no done transition \
             nor a state without data ({which} first): their soft values have no finite fixed point. Use gamma < 1 or \
             a horizon, or mark the episode ends in done",
            stuck.len()
        );
    }
    Ok(())
}

/// What [`qlearn`] learned from each dataset.
#[derive(Clone, Debug)]
pub struct LearnedQ {
    /// Datasets B.
    pub datasets: usize,
    /// States S.
    pub states: usize,
    /// Actions A.
    pub actions: usize,
    /// Soft Q (value units), `[dataset][state][action]`; NaN on unseen pairs and on states
    /// with no seen action.
    pub q: Vec<f32>,
    /// `V = alpha * log sum_a exp(Q / alpha)` over the seen actions, `[dataset][state]`; NaN
    /// on states with no seen action (gamma = 1 without horizon needs every state with data to
    /// reach an end of the data: [`qlearn`] refuses data where one does not).
    pub values: Vec<f32>,
    /// `pi(a|s) = exp((Q - V) / alpha)`, `[dataset][state][action]`; 0 on unseen pairs, NaN
    /// rows on states with no seen action.
    pub policy: Vec<f32>,
    /// Samples per dataset (padding left out).
    pub samples: Vec<usize>,
    /// Unseen (state, action) pairs per dataset, those of states with no data included.
    pub unseen_pairs: Vec<usize>,
    /// States with no seen action per dataset (no value).
    pub states_without_data: Vec<usize>,
    /// Sweeps of the solve (one solve for all datasets).
    pub sweeps: u32,
    /// `max |V_new - V_old|` of its last checked sweep.
    pub residual: f64,
    /// How it ended.
    pub status: Status,
    /// Wall time of the solve (s).
    pub seconds: f64,
}

/// Fitted soft Q iteration on `data` to its fixed point: soft value iteration on the
/// [`empirical_mdp`] by `solver` (any backend) under `options` (alpha, gamma, backup,
/// horizon; alpha = 0 is hard fitted Q iteration).
pub fn qlearn(
    solver: &mut dyn MdpSolver,
    data: &Dataset,
    options: &SolveOptions,
    progress: &mut OnProgress<'_>,
) -> Result<LearnedQ> {
    options.validate()?;
    let empirical = empirical_mdp(data)?;
    if options.excludes_unreachable() {
        check_ends_reachable(&empirical)?;
    }
    let outputs = Outputs {
        policy: true,
        q: true,
        ..Outputs::VALUES
    };
    let solved = solver.solve_mdp(&empirical.mdp, options, outputs, progress)?;
    let solution = &solved.solution;
    let (s_n, a_n, b_n) = (data.states, data.actions, data.datasets);
    let rows = b_n * s_n;
    // A diverged solve returns no Q and no policy: NaN (the caller reports the divergence).
    let total = empirical.mdp.states * a_n;
    let nan = vec![f32::NAN; total];
    let diverged = solution.status[0] == Status::Diverged;
    let q_all = match &solution.q {
        Some(q) => q,
        None if diverged => &nan,
        None => bail!("the solver returned no Q (a softvi bug: report it)"),
    };
    let policy_all = match &solution.policy {
        Some(p) => p,
        None if diverged => &nan,
        None => bail!("the solver returned no policy (a softvi bug: report it)"),
    };
    let mut q = q_all[..rows * a_n].to_vec();
    let mut values = solution.values[..rows].to_vec();
    let mut policy = policy_all[..rows * a_n].to_vec();
    for row in 0..rows {
        if !empirical.has_data(row / s_n, row % s_n) {
            values[row] = f32::NAN;
            q[row * a_n..(row + 1) * a_n].fill(f32::NAN);
            policy[row * a_n..(row + 1) * a_n].fill(f32::NAN);
        }
    }
    for (x, &n) in q.iter_mut().zip(&empirical.counts) {
        if n == 0 {
            *x = f32::NAN;
        }
    }
    let per_dataset = |count: &dyn Fn(usize, usize) -> bool| -> Vec<usize> {
        (0..b_n)
            .map(|b| (0..s_n).filter(|&s| count(b, s)).count())
            .collect()
    };
    let unseen_pairs = (0..b_n)
        .map(|b| {
            let block = &empirical.counts[b * s_n * a_n..(b + 1) * s_n * a_n];
            block.iter().filter(|&&n| n == 0).count()
        })
        .collect();
    Ok(LearnedQ {
        datasets: b_n,
        states: s_n,
        actions: a_n,
        q,
        values,
        policy,
        samples: (0..b_n).map(|b| data.samples(b)).collect(),
        unseen_pairs,
        states_without_data: per_dataset(&|b, s| !empirical.has_data(b, s)),
        sweeps: solution.iterations[0],
        residual: solution.residual[0],
        status: solution.status[0],
        seconds: solution.seconds,
    })
}
