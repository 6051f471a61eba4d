//! General tabular MDPs from NumPy `.npz` files: transitions as dense `P` `[S,A,S]` or CSR
//! over rows `s * A + a` (`indptr`, `indices`, `data`, as `scipy.sparse.csr_matrix` of shape
//! `(S*A, S)` holds them), rewards for a batch of tasks, terminal states and start
//! distributions. Loading validates everything and names the array and entry at fault.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::error::{Context, Result, bail, ensure};

use crate::io::npy::{self, NpyValues};

/// Largest deviation of a transition row's sum from 1.
pub const ROW_SUM_TOLERANCE: f64 = 1e-5;

/// Largest deviation of a task's `initial` sum from 1 that `.npz` loading accepts; within it
/// the row is scaled to sum to 1, beyond it refused.
pub const INITIAL_SUM_TOLERANCE: f64 = 1e-6;

/// A batch of B tasks sharing one model's dynamics.
#[derive(Clone, Debug, PartialEq)]
pub struct TabularMdp {
    /// States S.
    pub states: usize,
    /// Actions A.
    pub actions: usize,
    /// Tasks B.
    pub tasks: usize,
    /// `P(s'|s,a)`, sparse or dense (shared by the model's copies: shards, new rewards).
    pub transitions: Transitions,
    /// `r(s,a)`, `[task][state][action]`; -inf excludes the action (Q = -inf, policy 0),
    /// which every non-terminal state must leave one of. `.npz` files hold finite rewards.
    pub reward: Vec<f64>,
    /// Terminal states, `[task][state]`.
    pub terminal: Vec<bool>,
    /// Values of terminal states, `[task][state]` (0 unless given).
    pub terminal_value: Vec<f64>,
    /// Start distribution, `[task][state]` (uniform over non-terminal states unless given;
    /// over all states when every state is terminal).
    pub initial: Vec<f64>,
}

/// Transitions in CSR form over rows `s * A + a` (as `scipy.sparse.csr_matrix` of shape
/// `(S*A, S)` holds them).
#[derive(Clone, Debug, PartialEq)]
pub struct Csr {
    /// Row starts, `[S*A + 1]`; row `s * A + a` holds `P(.|s,a)`.
    pub indptr: Vec<u32>,
    /// Successor states of the nonzero entries, `[nnz]`.
    pub indices: Vec<u32>,
    /// Probabilities of the nonzero entries, `[nnz]`, as the caller gave them (the f32
    /// engines round them once, when they upload).
    pub probs: Vec<f64>,
}

/// A model's transitions: CSR, or a dense `[S*A, S]` matrix kept as given where most of its
/// entries are nonzero (the native engine then reads it without a CSR in between; the CSR is
/// built on first use by a path that reads one: the reference, the GPU's CSR kernels,
/// sampling). Cloning shares the storage.
#[derive(Clone)]
pub struct Transitions(Arc<Stored>);

/// Dense rows `[s * A + a][s']` that a model reads in place: its own `Vec`, or memory another
/// owner keeps unchanged while the model lives (a NumPy array the Python binding borrows,
/// so that 10^8 entries are not copied for one solve).
pub trait DenseRows: Send + Sync {
    /// The rows, `[s * A + a][s']`.
    fn rows(&self) -> &[f64];
}

impl DenseRows for Vec<f64> {
    fn rows(&self) -> &[f64] {
        self
    }
}

enum Stored {
    Sparse(Csr),
    Dense {
        /// `P(s'|s,a)`, `[s * A + a][s']`.
        p: Box<dyn DenseRows>,
        states: usize,
        nonzeros: usize,
        csr: OnceLock<Csr>,
    },
}

impl Transitions {
    /// CSR transitions (checked by [`TabularMdp::validate`]).
    pub fn sparse(indptr: Vec<u32>, indices: Vec<u32>, probs: Vec<f64>) -> Self {
        Self(Arc::new(Stored::Sparse(Csr {
            indptr,
            indices,
            probs,
        })))
    }

    /// Dense transitions `[s * A + a][s']` over `states` successors, every row checked (a
    /// probability distribution) and at most `u32::MAX` nonzero entries, so that the CSR built
    /// from them on first use holds them.
    pub fn dense(p: Vec<f64>, states: usize, actions: usize) -> Result<Self> {
        Self::dense_in_place(Box::new(p), states, actions)
    }

    /// [`Self::dense`] over rows read in place.
    pub fn dense_in_place(p: Box<dyn DenseRows>, states: usize, actions: usize) -> Result<Self> {
        let rows = p.rows();
        ensure!(
            states > 0 && actions > 0 && Some(rows.len()) == states.checked_mul(states * actions),
            "dense transitions hold {} entries, not S x A x S = {states} x {actions} x {states}",
            rows.len()
        );
        let nonzeros = check_dense_rows(rows, states, actions)?;
        Ok(Self(Arc::new(Stored::Dense {
            p,
            states,
            nonzeros,
            csr: OnceLock::new(),
        })))
    }

    /// The CSR form (built once, on first call, for dense transitions).
    pub fn csr(&self) -> &Csr {
        match &*self.0 {
            Stored::Sparse(csr) => csr,
            Stored::Dense { p, states, csr, .. } => {
                csr.get_or_init(|| dense_csr(p.rows(), *states))
            }
        }
    }

    /// The dense matrix `[s * A + a][s']`, where the transitions are stored dense.
    pub fn dense_rows(&self) -> Option<&[f64]> {
        match &*self.0 {
            Stored::Sparse(_) => None,
            Stored::Dense { p, .. } => Some(p.rows()),
        }
    }

    /// Nonzero entries (the CSR's length), without building the CSR.
    pub fn nonzeros(&self) -> usize {
        match &*self.0 {
            Stored::Sparse(csr) => csr.indices.len(),
            Stored::Dense { nonzeros, .. } => *nonzeros,
        }
    }
}

/// Equal when the CSR forms are (a dense model equals its CSR).
impl PartialEq for Transitions {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.csr() == other.csr()
    }
}

impl fmt::Debug for Transitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Stored::Sparse(csr) => f.debug_tuple("Sparse").field(csr).finish(),
            Stored::Dense {
                states, nonzeros, ..
            } => f
                .debug_struct("Dense")
                .field("states", states)
                .field("nonzeros", nonzeros)
                .finish_non_exhaustive(),
        }
    }
}

/// The start distribution a task gets when none is given, `[state]`: uniform over its
/// non-`terminal` states, or over all when every state is terminal (episodes then end where
/// they start).
pub fn uniform_start(terminal: &[bool]) -> Vec<f64> {
    let free = terminal.iter().filter(|&&t| !t).count();
    terminal
        .iter()
        .map(|&t| match free {
            0 => 1.0 / terminal.len() as f64,
            _ if !t => 1.0 / free as f64,
            _ => 0.0,
        })
        .collect()
}

impl TabularMdp {
    /// Reads and validates an `.npz` file; errors name the file and the array.
    pub fn load_npz(path: &Path) -> Result<Self> {
        let arrays = npy::read_npz(path, "MDP file")?;
        Self::from_array_map(arrays).with_context(|| format!("invalid MDP file {}", path.display()))
    }

    /// Builds and validates an MDP from named arrays (the entries of an `.npz`).
    ///
    /// A 2-D `R` is `[S,A]` when S*A matches the transitions, else `[B,S]`. A given `initial`
    /// must hold finite, non-negative entries summing per task to 1 within
    /// [`INITIAL_SUM_TOLERANCE`] (and is then scaled to sum to 1, unless it does within the
    /// rounding of its sum, S f64 ulps: then it is kept as given); a missing one is uniform
    /// over the non-terminal states, or over all states when every state is terminal.
    pub fn from_arrays(arrays: &HashMap<String, NpyValues>) -> Result<Self> {
        Self::from_array_map(arrays.clone())
    }

    /// [`Self::from_arrays`], taking the arrays: a dense `P` that stays dense (at least half
    /// of its entries nonzero) is kept without a copy.
    pub fn from_array_map(mut arrays: HashMap<String, NpyValues>) -> Result<Self> {
        let mut names: Vec<&String> = arrays.keys().collect();
        names.sort();
        for name in names {
            let array = &arrays[name];
            let entries = array
                .shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d));
            ensure!(
                entries == Some(array.data.len()),
                "array {name:?} has shape {:?}, which {}, but holds {} entries",
                array.shape,
                match entries {
                    Some(n) => format!("needs {n} entries"),
                    None => "overflows (the product of its dimensions does not fit)".into(),
                },
                array.data.len()
            );
        }
        let dense = match arrays.remove("P") {
            Some(p) => Some(dense_p(&p.shape, |s, a| Transitions::dense(p.data, s, a))?),
            None => None,
        };
        Self::with_arrays(arrays, dense)
    }

    /// [`Self::from_arrays`] with the dense `P` `[S,A,S]` of shape `shape` read in place from
    /// `rows` (kept by the model where it stays dense): the arrays hold the rest.
    pub fn from_dense_in_place(
        rows: Box<dyn DenseRows>,
        shape: &[usize],
        arrays: HashMap<String, NpyValues>,
    ) -> Result<Self> {
        ensure!(!arrays.contains_key("P"), "P given twice");
        let dense = dense_p(shape, |s, a| Transitions::dense_in_place(rows, s, a))?;
        Self::with_arrays(arrays, Some(dense))
    }

    /// The model of `arrays` with transitions `dense` (S, A and the transitions) or, where
    /// None, the CSR arrays' (`indptr`, `indices`, `data`).
    fn with_arrays(
        arrays: HashMap<String, NpyValues>,
        dense: Option<(usize, usize, Transitions)>,
    ) -> Result<Self> {
        let reward = arrays.get("R").context("missing array R (rewards)")?;
        let (states, actions, transitions) = match dense {
            Some(dense) => dense,
            None => {
                let get = |name: &str| {
                    arrays.get(name).with_context(|| {
                        format!("missing transitions: give P [S,A,S] or indptr, indices, data (no {name})")
                    })
                };
                let (states, actions, indptr, indices, probs) =
                    sparse_transitions(get("indptr")?, get("indices")?, get("data")?, reward)?;
                (states, actions, Transitions::sparse(indptr, indices, probs))
            }
        };
        let (tasks, reward) = rewards(reward, states, actions)?;
        let per_task = |name: &str, default: f64| -> Result<Vec<f64>> {
            match arrays.get(name) {
                None => Ok(vec![default; tasks * states]),
                Some(a) if a.shape == [states] => Ok(a.data.repeat(tasks)),
                Some(a) if a.shape == [tasks, states] => Ok(a.data.clone()),
                Some(a) => bail!(
                    "{name} has shape {:?}; expected [S] = [{states}] or [B,S] = [{tasks}, {states}]",
                    a.shape
                ),
            }
        };
        let terminal = per_task("terminal", 0.0)?;
        // 0.5, 2, -1 and NaN all read as terminal before.
        if let Some(i) = terminal.iter().position(|&t| t != 0.0 && t != 1.0) {
            bail!(
                "terminal[{}] = {} is not 0 or 1 (false or true)",
                i % states,
                terminal[i]
            );
        }
        let terminal: Vec<bool> = terminal.iter().map(|&t| t == 1.0).collect();
        let terminal_value = per_task("terminal_value", 0.0)?;
        let given = arrays.get("initial");
        let mut initial = per_task("initial", 0.0)?;
        if let Some(array) = given
            && let Some(i) = array
                .data
                .iter()
                .position(|x| !(x.is_finite() && *x >= 0.0))
        {
            let index = match array.shape[..] {
                [_, _] => format!("{}, {}", i / states, i % states),
                _ => i.to_string(),
            };
            bail!(
                "initial[{index}] is {} (a start probability is finite and >= 0)",
                array.data[i]
            );
        }
        for t in 0..tasks {
            let row = &mut initial[t * states..(t + 1) * states];
            if given.is_none() {
                row.copy_from_slice(&uniform_start(&terminal[t * states..(t + 1) * states]));
                continue;
            }
            let sum: f64 = row.iter().sum();
            ensure!(
                sum > 0.0,
                "initial of task {t} is all zero (a start distribution sums to 1)"
            );
            ensure!(
                (sum - 1.0).abs() <= INITIAL_SUM_TOLERANCE,
                "initial of task {t} sums to {sum}, not 1 (tolerance {INITIAL_SUM_TOLERANCE})"
            );
            // A row that sums to 1 within its own sum's rounding is kept as given, so that an
            // MDP written back (`TabularMDP.save_npz`) loads bit for bit.
            if (sum - 1.0).abs() > states as f64 * f64::EPSILON {
                row.iter_mut().for_each(|x| *x /= sum);
            }
        }
        for (name, values) in [("terminal_value", &terminal_value)] {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{name} at task {}, state {} is {}",
                    i / states,
                    i % states,
                    values[i]
                );
            }
        }
        Ok(Self {
            states,
            actions,
            tasks,
            transitions,
            reward,
            terminal,
            terminal_value,
            initial,
        })
    }

    /// This MDP with the rewards `r` (`R` as [`Self::from_arrays`] reads it), the rest kept:
    /// what `from_arrays` gives for these arrays with `R` replaced, without converting and
    /// checking the transitions again. Where the number of tasks changes, the per-task arrays
    /// (terminal, terminal values, start) must be the same in every task of this MDP; each new
    /// task gets them.
    pub fn with_reward(&self, r: &NpyValues) -> Result<Self> {
        ensure!(
            r.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) == Some(r.data.len()),
            "array \"R\" has shape {:?}, which does not hold its {} entries",
            r.shape,
            r.data.len()
        );
        let (tasks, reward) = rewards(r, self.states, self.actions)?;
        let s_n = self.states;
        let per_task = |name: &str, x: &[f64]| -> Result<Vec<f64>> {
            if tasks == self.tasks {
                return Ok(x.to_vec());
            }
            ensure!(
                x.chunks_exact(s_n).all(|row| row == &x[..s_n]),
                "{name} differs between this MDP's {} tasks; a reward of {tasks} tasks needs \
                 one {name} for all",
                self.tasks
            );
            Ok(x[..s_n].repeat(tasks))
        };
        let terminal: Vec<f64> = self
            .terminal
            .iter()
            .map(|&t| f64::from(u8::from(t)))
            .collect();
        Ok(Self {
            tasks,
            reward,
            terminal: per_task("terminal", &terminal)?
                .iter()
                .map(|&t| t == 1.0)
                .collect(),
            terminal_value: per_task("terminal_value", &self.terminal_value)?,
            initial: per_task("initial", &self.initial)?,
            ..self.clone()
        })
    }

    /// Checks that the arrays agree with each other and hold a valid MDP: every shape, a
    /// monotone `indptr` covering `indices`, successors in range, each row a probability
    /// distribution (non-negative, finite, summing to 1 within [`ROW_SUM_TOLERANCE`]), rewards
    /// finite or -inf (an excluded action) with a finite one in every non-terminal state, finite
    /// terminal values, and a start distribution of finite non-negative entries,
    /// not all zero in any task.
    /// Every solve runs this first, so no MDP the library accepts can panic it; errors name
    /// the array and the index, row or task.
    pub fn validate(&self) -> Result<()> {
        let (s_n, a_n, b_n) = (self.states, self.actions, self.tasks);
        ensure!(s_n > 0, "the MDP has no state (states = 0)");
        ensure!(a_n > 0, "the MDP has no action (actions = 0)");
        ensure!(b_n > 0, "the MDP has no task (tasks = 0)");
        let rows = s_n.checked_mul(a_n).context("states x actions overflows")?;
        let per_task = b_n.checked_mul(s_n).context("tasks x states overflows")?;
        let with_actions = per_task
            .checked_mul(a_n)
            .context("tasks x states x actions overflows")?;
        ensure!(
            u32::try_from(s_n).is_ok(),
            "{s_n} states do not fit the u32 state indices"
        );
        let csr = match self.transitions.dense_rows() {
            // Checked when built, against this model's sizes here.
            Some(p) => {
                ensure!(
                    p.len() == rows * s_n,
                    "P holds {} entries, not S x A x S = {s_n} x {a_n} x {s_n}",
                    p.len()
                );
                None
            }
            None => Some(self.transitions.csr()),
        };
        if let Some(csr) = csr {
            validate_csr(csr, s_n, a_n)?;
        }
        for (name, len, want) in [
            ("reward", self.reward.len(), with_actions),
            ("terminal", self.terminal.len(), per_task),
            ("terminal_value", self.terminal_value.len(), per_task),
            ("initial", self.initial.len(), per_task),
        ] {
            ensure!(
                len == want,
                "{name} holds {len} entries, not the {want} its shape [B,S{}] = [{b_n}, {s_n}{}] needs",
                if name == "reward" { ",A" } else { "" },
                if name == "reward" {
                    format!(", {a_n}")
                } else {
                    String::new()
                }
            );
        }
        // -inf excludes an action from the soft max (an unseen pair of
        // `analysis::qlearn`): its Q is -inf and its policy mass exactly 0.
        if let Some(i) = self
            .reward
            .iter()
            .position(|r| !(r.is_finite() || *r == f64::NEG_INFINITY))
        {
            bail!(
                "reward at task {}, state {}, action {} is {} (rewards are finite, or -inf to \
                 exclude the action)",
                i / (s_n * a_n),
                i / a_n % s_n,
                i % a_n,
                self.reward[i]
            );
        }
        for (i, row) in self.reward.chunks_exact(a_n).enumerate() {
            ensure!(
                self.terminal[i] || row.iter().any(|r| r.is_finite()),
                "task {}, state {}: every action's reward is -inf (excluded); a state that does \
                 not stop needs an action",
                i / s_n,
                i % s_n
            );
        }
        if let Some(i) = self.terminal_value.iter().position(|v| !v.is_finite()) {
            bail!(
                "terminal_value at task {}, state {} is {}",
                i / s_n,
                i % s_n,
                self.terminal_value[i]
            );
        }
        if let Some(i) = self
            .initial
            .iter()
            .position(|x| !(x.is_finite() && *x >= 0.0))
        {
            bail!(
                "initial at task {}, state {} is {} (must be finite and >= 0)",
                i / s_n,
                i % s_n,
                self.initial[i]
            );
        }
        if let Some(t) = self
            .initial
            .chunks_exact(s_n)
            .position(|row| row.iter().all(|&x| x == 0.0))
        {
            bail!("initial of task {t} is all zero (a start distribution sums to 1)");
        }
        Ok(())
    }

    /// Nonzero transition entries.
    pub fn nonzeros(&self) -> usize {
        self.transitions.nonzeros()
    }

    /// The transitions in CSR form (built on first call for a dense model).
    pub fn csr(&self) -> &Csr {
        self.transitions.csr()
    }

    /// `P(next | s, a)`: the sum of the row's entries into `next` (0 if none).
    pub fn probability(&self, s: usize, a: usize, next: usize) -> f64 {
        let row = s * self.actions + a;
        if let Some(p) = self.transitions.dense_rows() {
            return p[row * self.states + next];
        }
        let csr = self.csr();
        (csr.indptr[row] as usize..csr.indptr[row + 1] as usize)
            .filter(|&k| csr.indices[k] as usize == next)
            .map(|k| csr.probs[k])
            .sum()
    }

    /// The transitions by successor, for the forward (occupancy) pass's pull: row `s'` lists
    /// the CSR rows `s * A + a` that may step into `s'`, ascending, with their probabilities.
    pub fn transpose(&self) -> Transpose {
        self.transpose_where(|_| true)
    }

    /// The states that step into each state with positive probability: row starts `[S + 1]`
    /// and source states `[entries]` (a state once per action that may step there), the
    /// structure of [`Self::transpose`] without the probabilities or the actions.
    pub fn predecessors(&self) -> (Vec<u32>, Vec<u32>) {
        let t = self.transpose_where(|p| p > 0.0);
        let a = self.actions as u32;
        (t.indptr, t.rows.iter().map(|&row| row / a).collect())
    }

    /// [`Self::transpose`] of the entries whose probability passes `keep`.
    fn transpose_where(&self, keep: impl Fn(f64) -> bool) -> Transpose {
        let csr = self.csr();
        let mut indptr = vec![0u32; self.states + 1];
        for (&j, &p) in csr.indices.iter().zip(&csr.probs) {
            indptr[j as usize + 1] += keep(p) as u32;
        }
        for s in 0..self.states {
            indptr[s + 1] += indptr[s];
        }
        let mut next = indptr.clone();
        let kept = indptr[self.states] as usize;
        let mut rows = vec![0u32; kept];
        let mut probs = vec![0f64; kept];
        for row in 0..self.states * self.actions {
            for k in csr.indptr[row] as usize..csr.indptr[row + 1] as usize {
                if !keep(csr.probs[k]) {
                    continue;
                }
                let slot = &mut next[csr.indices[k] as usize];
                rows[*slot as usize] = row as u32;
                probs[*slot as usize] = csr.probs[k];
                *slot += 1;
            }
        }
        Transpose {
            indptr,
            rows,
            probs,
        }
    }
}

/// Transitions grouped by successor (the transpose of the `(S*A, S)` CSR matrix).
#[derive(Clone, Debug, PartialEq)]
pub struct Transpose {
    /// Row starts, `[S + 1]`; row `s'` holds the transitions into `s'`.
    pub indptr: Vec<u32>,
    /// Source rows `s * A + a` of the entries, ascending within a row, `[nnz]`.
    pub rows: Vec<u32>,
    /// `P(s'|s,a)` of the entries, `[nnz]`.
    pub probs: Vec<f64>,
}

/// Checks one row's entries; `label` names the row as `(s, a)`.
fn check_row(label: (usize, usize), probs: &[f64], successor: impl Fn(usize) -> f64) -> Result<()> {
    let (s, a) = label;
    ensure!(!probs.is_empty(), "transition row (s={s}, a={a}) is empty");
    let mut sum = 0.0;
    for (k, &p) in probs.iter().enumerate() {
        ensure!(
            p.is_finite() && p >= 0.0,
            "P(s'={}|s={s},a={a}) = {p} is negative or not a number",
            successor(k)
        );
        sum += p;
    }
    ensure!(
        (sum - 1.0).abs() <= ROW_SUM_TOLERANCE,
        "transition row (s={s}, a={a}) sums to {sum}, not 1 (tolerance {ROW_SUM_TOLERANCE})"
    );
    Ok(())
}

/// Sizes and arrays of CSR transitions: S, A, `indptr`, `indices`, `probs`.
type CsrParts = (usize, usize, Vec<u32>, Vec<u32>, Vec<f64>);

/// Dense `P` `[S,A,S]` to transitions: kept dense where at least half of its entries are
/// nonzero (where the native engine runs it dense), else CSR without the zeros.
fn dense_p(
    shape: &[usize],
    build: impl FnOnce(usize, usize) -> Result<Transitions>,
) -> Result<(usize, usize, Transitions)> {
    let [states, actions, states2] = shape[..] else {
        bail!("P has shape {shape:?}; expected [S,A,S]");
    };
    ensure!(
        states == states2,
        "P has shape {shape:?}; its first and last axes differ"
    );
    ensure!(states > 0 && actions > 0, "P is empty: shape {shape:?}");
    ensure!(
        states < u32::MAX as usize,
        "P has too many states ({states})"
    );
    let transitions = build(states, actions)?;
    if 2 * transitions.nonzeros() >= states * actions * states {
        return Ok((states, actions, transitions));
    }
    let csr = transitions.csr().clone();
    Ok((
        states,
        actions,
        Transitions::sparse(csr.indptr, csr.indices, csr.probs),
    ))
}

/// Checks every row of a dense `p` `[s * A + a][s']` (a probability distribution, as
/// [`check_row`] checks a CSR row's entries) and returns the nonzero entries, at most
/// `u32::MAX`. One pass on every core: 10^8 entries check in a few tens of milliseconds.
fn check_dense_rows(p: &[f64], states: usize, actions: usize) -> Result<usize> {
    let rows = p.len() / states;
    let check = |first: usize, block: &[f64]| -> Result<usize> {
        let mut nonzeros = 0;
        for (i, row) in block.chunks_exact(states).enumerate() {
            let (s, a) = ((first + i) / actions, (first + i) % actions);
            // Branch-free over the row (it vectorises); the first bad entry is looked up
            // only when there is one.
            // Eight partial sums: one running sum would wait on each addition.
            let (mut sums, mut bad, mut row_nonzeros) = ([0.0f64; 8], false, 0usize);
            let (wide, rest) = row.as_chunks::<8>();
            for chunk in wide {
                for k in 0..8 {
                    let x = chunk[k];
                    bad |= !(x.is_finite() && x >= 0.0);
                    sums[k] += x;
                    row_nonzeros += (x != 0.0) as usize;
                }
            }
            for &x in rest {
                bad |= !(x.is_finite() && x >= 0.0);
                sums[0] += x;
                row_nonzeros += (x != 0.0) as usize;
            }
            let sum: f64 = sums.iter().sum();
            if bad {
                let j = row.iter().position(|x| !(x.is_finite() && *x >= 0.0));
                let j = j.unwrap_or_default();
                bail!(
                    "P(s'={j}|s={s},a={a}) = {} is negative or not a number",
                    row[j]
                );
            }
            ensure!(row_nonzeros > 0, "transition row (s={s}, a={a}) is empty");
            ensure!(
                (sum - 1.0).abs() <= ROW_SUM_TOLERANCE,
                "transition row (s={s}, a={a}) sums to {sum}, not 1 (tolerance {ROW_SUM_TOLERANCE})"
            );
            nonzeros += row_nonzeros;
        }
        Ok(nonzeros)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.div_ceil(threads).max(1);
    let counts: Vec<Result<usize>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (p.chunks(per * states).enumerate())
            .map(|(k, block)| scope.spawn(move || check(k * per, block)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a row check panicked"))
            .collect()
    });
    // The first bad row in row order, whichever thread found it.
    let mut nonzeros = 0usize;
    for count in counts {
        nonzeros += count?;
    }
    ensure!(
        u32::try_from(nonzeros).is_ok(),
        "P has {nonzeros} nonzero entries, more than the u32 row offsets hold"
    );
    Ok(nonzeros)
}

/// The CSR form of a checked dense `p` `[s * A + a][s']`, dropping zeros.
fn dense_csr(p: &[f64], states: usize) -> Csr {
    let nonzeros = p.iter().filter(|&&x| x != 0.0).count();
    let mut indptr = Vec::with_capacity(p.len() / states + 1);
    indptr.push(0u32);
    let (mut indices, mut probs) = (Vec::with_capacity(nonzeros), Vec::with_capacity(nonzeros));
    for entries in p.chunks_exact(states) {
        for (j, &x) in entries.iter().enumerate() {
            if x != 0.0 {
                indices.push(j as u32);
                probs.push(x);
            }
        }
        indptr.push(indices.len() as u32);
    }
    Csr {
        indptr,
        indices,
        probs,
    }
}

/// Checks CSR transitions against S and A: a monotone `indptr` covering `indices`, successors
/// in range, each row a probability distribution.
fn validate_csr(csr: &Csr, s_n: usize, a_n: usize) -> Result<()> {
    let rows = s_n * a_n;
    ensure!(
        csr.indptr.len() == rows + 1,
        "indptr holds {} entries, not states x actions + 1 = {}",
        csr.indptr.len(),
        rows + 1
    );
    ensure!(csr.indptr[0] == 0, "indptr[0] is {}, not 0", csr.indptr[0]);
    if let Some(i) = csr.indptr.windows(2).position(|w| w[1] < w[0]) {
        bail!(
            "indptr decreases at index {} ({} after {})",
            i + 1,
            csr.indptr[i + 1],
            csr.indptr[i]
        );
    }
    let nnz = csr.indptr[rows] as usize;
    ensure!(
        csr.indices.len() == nnz && csr.probs.len() == nnz,
        "indptr ends at {nnz} but indices holds {} and probs {} entries",
        csr.indices.len(),
        csr.probs.len()
    );
    if let Some(k) = csr.indices.iter().position(|&j| j as usize >= s_n) {
        bail!(
            "indices[{k}] = {} is not a state (states = {s_n})",
            csr.indices[k]
        );
    }
    // Successors are in range (checked above): each row's probabilities are checked, with
    // no per-row allocation (10^8 entries validate in a fraction of a second).
    for row in 0..rows {
        let range = csr.indptr[row] as usize..csr.indptr[row + 1] as usize;
        check_row((row / a_n, row % a_n), &csr.probs[range.clone()], |k| {
            csr.indices[range.start + k] as f64
        })?;
    }
    Ok(())
}

/// CSR arrays to transitions; S comes from the rewards' shape.
fn sparse_transitions(
    indptr: &NpyValues,
    indices: &NpyValues,
    data: &NpyValues,
    reward: &NpyValues,
) -> Result<CsrParts> {
    ensure!(
        indptr.shape.len() == 1 && indptr.data.len() >= 2,
        "indptr has shape {:?}; expected [S*A+1]",
        indptr.shape
    );
    ensure!(
        indices.shape.len() == 1,
        "indices has shape {:?}; expected [nnz]",
        indices.shape
    );
    ensure!(
        data.shape == indices.shape,
        "data has shape {:?}, indices {:?}; they must match",
        data.shape,
        indices.shape
    );
    let rows = indptr.data.len() - 1;
    let states = match reward.shape[..] {
        [s] | [_, s, _] => s,
        [x, y] if x.checked_mul(y) == Some(rows) => x,
        [_, s] => s,
        _ => bail!(
            "R has shape {:?}; expected [S], [S,A], [B,S] or [B,S,A]",
            reward.shape
        ),
    };
    // With CSR transitions S comes from R's shape; a 2-D R says how it was read.
    let s_from_r = || match reward.shape[..] {
        [x, y] => format!(
            "S = {states} from R of shape [{x}, {y}] read as {} (a 2-D R is [S,A] when S x A \
             is the {rows} transition rows, else [B,S])",
            if x.checked_mul(y) == Some(rows) {
                "[S,A]"
            } else {
                "[B,S]"
            }
        ),
        _ => format!("S = {states} from R of shape {:?}", reward.shape),
    };
    ensure!(
        states > 0 && rows.is_multiple_of(states),
        "indptr has {rows} rows, not a multiple of S: {}",
        s_from_r()
    );
    let actions = rows / states;
    let nnz = indices.data.len();
    ensure!(
        indptr.data[0] == 0.0 && indptr.data[rows] as usize == nnz,
        "indptr must run from 0 to nnz = {nnz}"
    );
    for row in 0..rows {
        let (lo, hi) = (indptr.data[row], indptr.data[row + 1]);
        ensure!(
            lo <= hi && hi as usize <= nnz,
            "indptr decreases or passes nnz at row {row} (s={}, a={})",
            row / actions,
            row % actions
        );
        let range = lo as usize..hi as usize;
        let (s, a) = (row / actions, row % actions);
        let check = || -> Result<()> {
            for &j in &indices.data[range.clone()] {
                ensure!(
                    j >= 0.0 && (j as usize) < states && j.fract() == 0.0,
                    "transition row (s={s}, a={a}) names successor {j}, outside 0..{states}"
                );
            }
            check_row((s, a), &data.data[range.clone()], |k| {
                indices.data[range.start + k]
            })
        };
        check().with_context(s_from_r)?;
    }
    Ok((
        states,
        actions,
        indptr.data.iter().map(|&x| x as u32).collect(),
        indices.data.iter().map(|&x| x as u32).collect(),
        data.data.clone(),
    ))
}

/// `R` of shape `[S]`, `[S,A]`, `[B,S]` or `[B,S,A]` to `[task][state][action]`.
fn rewards(r: &NpyValues, states: usize, actions: usize) -> Result<(usize, Vec<f64>)> {
    if let Some(i) = r.data.iter().position(|v| !v.is_finite()) {
        bail!("R has a non-finite entry {} at flat index {i}", r.data[i]);
    }
    let (tasks, per_action) = match r.shape[..] {
        _ if states.checked_mul(actions).is_none() => {
            bail!("states x actions = {states} x {actions} overflows")
        }
        [s] if s == states => (1, false),
        [s, a] if (s, a) == (states, actions) => (1, true),
        [b, s] if s == states => (b, false),
        [b, s, a] if (s, a) == (states, actions) => (b, true),
        [x, y] => bail!(
            "R has shape [{x}, {y}]: a 2-D R is read as [S,A] = [{states}, {actions}] when it \
             has that shape, else as [B,S] (a reward per task and state) when its last axis is \
             S = {states}; it is neither"
        ),
        _ => bail!(
            "R has shape {:?}; expected [S], [S,A], [B,S] or [B,S,A] with S = {states}, A = {actions}",
            r.shape
        ),
    };
    ensure!(tasks > 0, "R holds no task");
    let entries = tasks.checked_mul(states * actions).with_context(|| {
        format!("R: tasks x states x actions = {tasks} x {states} x {actions} overflows")
    })?;
    // The model keeps R as [B,S,A] f64 and three [B,S] per-task arrays: refuse before
    // allocating them (a [B,S] R over many actions grows A times here).
    let kept = (entries as u128 + 3 * (tasks as u128) * (states as u128)) * 8;
    crate::engine::memory::ensure_fits(u64::try_from(kept).unwrap_or(u64::MAX), || {
        format!(
            "the MDP's rewards [B,S,A] = [{tasks}, {states}, {actions}] (f64) and per-task arrays"
        )
    })?;
    let reward = if per_action {
        r.data.clone()
    } else {
        r.data
            .iter()
            .flat_map(|&x| std::iter::repeat_n(x, actions))
            .collect()
    };
    Ok((tasks, reward))
}
