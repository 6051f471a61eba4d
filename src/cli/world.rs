//! The world and task flags shared by the commands that build a batch, and the batch they
//! build: a gridworld ([`World`]) or any world as a tabular MDP ([`MdpWorld`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::json;

use super::summary::path_json;
use softvi::error::Spelling;

use softvi::io::npy;
use softvi::world::grid::{ActionSet, Connectivity, Grid, MoveCost};
use softvi::world::grid_problem::{GridProblem, GridTask};

/// The world and task flags shared by commands that build a gridworld batch.
#[derive(Args, Debug)]
pub(super) struct WorldArgs {
    /// MovingAI .map file.
    #[arg(
        long,
        value_name = "FILE.map",
        conflicts_with = "maze",
        required_unless_present_any = ["maze", "mdp"]
    )]
    map: Option<PathBuf>,
    /// General tabular MDP as a NumPy .npz (P or indptr/indices/data, R, optional terminal,
    /// terminal_value, initial); outputs are [B,S] and [B,S,A].
    #[arg(long, value_name = "FILE.npz", conflicts_with_all = ["map", "maze", "goal", "goals", "reward"])]
    pub(super) mdp: Option<PathBuf>,
    /// Built-in generated maze of W x H cells (free cells at odd X and Y).
    #[arg(long, value_name = "WxH")]
    maze: Option<String>,
    /// Seed of the generated maze.
    #[arg(long, default_value_t = 0, requires = "maze", value_name = "N")]
    maze_seed: u64,
    /// Goal cell X,Y (X = column, Y = row); each goal is one task. Repeatable.
    #[arg(long = "goal", value_name = "X,Y", num_args = 1.., conflicts_with = "goals",
          required_unless_present_any = ["goals", "mdp"])]
    goal: Vec<String>,
    /// File with one `X Y` goal per line (one task each; blank lines and # comments allowed).
    #[arg(long, value_name = "FILE")]
    goals: Option<PathBuf>,
    /// State reward R_task, float32 .npy of shape [H,W] (shared) or [B,H,W] (per task).
    #[arg(long, value_name = "FILE.npy")]
    reward: Option<PathBuf>,
    /// 4- or 8-connected moves.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(4..=8))]
    connectivity: u8,
    /// Add a STAY action (last in the action order).
    #[arg(long)]
    stay: bool,
    /// Slip probability eps: with probability eps a uniformly drawn action's move happens.
    #[arg(long, default_value_t = 0.0, value_name = "EPS")]
    slip: f64,
    /// Step costs ORTH,DIAG[,STAY] (default 1, sqrt(2), 0).
    #[arg(long, value_name = "ORTH,DIAG[,STAY]")]
    move_cost: Option<String>,
}

/// A gridworld batch built from the command line, with a description of its source.
pub(super) struct World {
    /// The problem.
    pub(super) problem: GridProblem,
    /// `"maze 255x255 seed 0"` or the map path.
    pub(super) source: String,
    /// Goals per task as (X, Y).
    pub(super) goals: Vec<Vec<(usize, usize)>>,
    /// How to rebuild the map: `{"kind": "maze", "width", "height", "seed"}` or
    /// `{"kind": "file", "path"}` (absolute).
    pub(super) map: serde_json::Value,
}

pub(super) fn parse_pair(text: &str, sep: char, what: &str) -> Result<(usize, usize)> {
    let parts: Vec<&str> = text
        .split(sep)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    ensure!(
        parts.len() == 2,
        "{what} {text:?} is not of the form X{sep}Y"
    );
    let num = |s: &str| {
        s.parse::<usize>()
            .with_context(|| format!("{what} {text:?}: {s:?} is not a cell index"))
    };
    Ok((num(parts[0])?, num(parts[1])?))
}

/// The prior over a batch's tasks from `--prior FILE.npy` (shape `[B]`, checked before any
/// solve, so a bad prior costs none and is named as such), or uniform over `tasks`.
pub(super) fn read_prior(path: Option<&PathBuf>, tasks: usize) -> Result<Vec<f64>> {
    let Some(path) = path else {
        return Ok(vec![1.0 / tasks as f64; tasks]);
    };
    let array = npy::read_float(path)?;
    ensure!(
        array.shape == [tasks],
        "--prior {}: shape {:?}, expected [B] = [{tasks}]",
        path.display(),
        array.shape
    );
    let prior: Vec<f64> = array.data.iter().map(|&x| x as f64).collect();
    softvi::analysis::infer::check_prior(&prior, tasks)
        .with_context(|| format!("--prior {}", path.display()))?;
    Ok(prior)
}

/// Loads a MovingAI map, warning on stderr about characters that are no MovingAI terrain
/// (read as walls: a map drawn with `#` or `X` for walls works, a typo for `.` is visible).
pub(super) fn load_map(path: &Path) -> Result<Grid> {
    let (grid, unknown) = Grid::load_movingai_noting(path)?;
    for u in unknown {
        eprintln!(
            "warning: {}:{}: {:?} is no MovingAI terrain (. G S passable; @ O T W blocked); its \
             {} cell(s) are read as walls",
            path.display(),
            u.first_line,
            u.character,
            u.cells
        );
    }
    Ok(grid)
}

/// Parses a goals file: one `X Y` per line (X and Y apart by spaces, tabs or a comma),
/// blank lines and `#` comments allowed. Each goal comes with where it was read
/// (`FILE:LINE`), for messages.
fn parse_goals_file(path: &Path) -> Result<Vec<((usize, usize), String)>> {
    let text = softvi::io::output::read_input_text(path, "goals file")?;
    let mut goals = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let spaced = line.replace([',', '\t'], " ");
        let pair = parse_pair(&spaced, ' ', "goal").with_context(|| at.clone())?;
        goals.push((pair, at));
    }
    ensure!(
        !goals.is_empty(),
        "goals file {} lists no goal",
        path.display()
    );
    Ok(goals)
}

impl WorldArgs {
    /// Refuses, before a --maze world is generated, a solve of it that cannot fit this
    /// machine's memory (the solver checks again, exactly, once the world is built): a
    /// 32768x32768 maze takes a minute to generate. Map files are checked once loaded.
    pub(super) fn check_memory(
        &self,
        options: &softvi::SolveOptions,
        outputs: softvi::Outputs,
    ) -> Result<()> {
        use softvi::engine::memory::{GridSize, check_grid_size};
        use softvi::world::grid::MAX_SIDE;
        let Some(Ok((w, h))) = self.maze.as_ref().map(|m| parse_pair(m, 'x', "--maze")) else {
            return Ok(());
        };
        if !(3..=MAX_SIDE).contains(&w) || !(3..=MAX_SIDE).contains(&h) {
            return Ok(()); // build() says why
        }
        let actions = ActionSet {
            connectivity: if self.connectivity == 4 {
                Connectivity::Four
            } else {
                Connectivity::Eight
            },
            stay: self.stay,
        };
        // A maze's free cells: its rooms (odd X and Y) and the passages between them.
        let rooms = ((w - 1) / 2) * ((h - 1) / 2);
        let size = GridSize {
            cells: w * h,
            free_cells: 2 * rooms,
            tasks: self.goal.len().max(1),
            actions: actions.count(),
            slip: self.slip > 0.0,
        };
        Ok(check_grid_size(size, options, outputs)?)
    }

    /// Builds the gridworld batch, validating everything the flags say.
    pub(super) fn build(&self) -> Result<World> {
        let (grid, source, map) = match (&self.map, &self.maze) {
            (Some(path), _) => {
                let grid = load_map(path)?;
                let absolute = path_json(path, "--map")?;
                (
                    grid,
                    path.display().to_string(),
                    json!({"kind": "file", "path": absolute}),
                )
            }
            (None, Some(size)) => {
                let (w, h) =
                    parse_pair(size, 'x', "--maze").context("--maze expects WxH, e.g. 255x255")?;
                let map = json!({"kind": "maze", "width": w, "height": h, "seed": self.maze_seed});
                (
                    Grid::generate_maze(w, h, self.maze_seed)?,
                    format!("maze {w}x{h} seed {}", self.maze_seed),
                    map,
                )
            }
            (None, None) => bail!("give a world: --map FILE.map or --maze WxH"),
        };
        // Each goal with where it was given: `FILE:LINE` or `--goal X,Y`.
        let placed: Vec<((usize, usize), String)> = match &self.goals {
            Some(path) => parse_goals_file(path)?,
            None => (self.goal.iter())
                .map(|g| Ok((parse_pair(g, ',', "--goal")?, format!("--goal {g}"))))
                .collect::<Result<_>>()?,
        };
        ensure!(
            !placed.is_empty(),
            "give at least one goal: --goal X,Y or --goals FILE"
        );
        for ((x, y), at) in &placed {
            ensure!(
                *x < grid.width && *y < grid.height,
                "{at}: goal X={x},Y={y} is off the {}x{} map (X < {}, Y < {})",
                grid.width,
                grid.height,
                grid.width,
                grid.height
            );
            ensure!(
                grid.free[y * grid.width + x],
                "{at}: goal X={x},Y={y} is on a blocked cell"
            );
        }
        let goals: Vec<(usize, usize)> = placed.into_iter().map(|(g, _)| g).collect();
        let connectivity = match self.connectivity {
            4 => Connectivity::Four,
            8 => Connectivity::Eight,
            c => bail!("--connectivity must be 4 or 8, got {c}"),
        };
        let move_cost = match &self.move_cost {
            None => MoveCost::default(),
            Some(text) => {
                let v: Vec<f64> = text
                    .split(',')
                    .map(|s| s.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .with_context(|| {
                        format!("--move-cost {text:?} is not ORTH,DIAG[,STAY] numbers")
                    })?;
                ensure!(
                    (2..=3).contains(&v.len()),
                    "--move-cost {text:?} needs 2 or 3 numbers (ORTH,DIAG[,STAY])"
                );
                MoveCost {
                    orthogonal: v[0],
                    diagonal: v[1],
                    stay: v.get(2).copied().unwrap_or(0.0),
                }
            }
        };
        let rewards = match &self.reward {
            None => vec![None; goals.len()],
            Some(path) => {
                let array = npy::read_float(path)?;
                let (h, w, b) = (grid.height, grid.width, goals.len());
                let per_task = match array.shape[..] {
                    [ah, aw] if (ah, aw) == (h, w) => false,
                    [ab, ah, aw] if (ab, ah, aw) == (b, h, w) => true,
                    _ => bail!(
                        "--reward {}: shape {:?} is neither [H,W] = [{h}, {w}] nor [B,H,W] = [{b}, {h}, {w}]",
                        path.display(),
                        array.shape
                    ),
                };
                if let Some(i) = array.data.iter().position(|r| !r.is_finite()) {
                    let c = i % (h * w);
                    bail!(
                        "--reward {}: value {} at task {}, X={}, Y={} is not finite",
                        path.display(),
                        array.data[i],
                        i / (h * w),
                        c % w,
                        c / w
                    );
                }
                (0..b)
                    .map(|t| {
                        let start = if per_task { t * h * w } else { 0 };
                        Some(array.data[start..start + h * w].to_vec())
                    })
                    .collect()
            }
        };
        let tasks = goals
            .iter()
            .zip(rewards)
            .map(|(&(x, y), reward)| GridTask {
                goals: vec![y * grid.width + x],
                reward,
            })
            .collect();
        let problem = GridProblem {
            grid,
            actions: ActionSet {
                connectivity,
                stay: self.stay,
            },
            slip: self.slip,
            move_cost,
            tasks,
        };
        problem.validate_as(Spelling::Flag)?;
        Ok(World {
            problem,
            source,
            goals: goals.into_iter().map(|g| vec![g]).collect(),
            map,
        })
    }
}

impl World {
    /// The cells (`row * W + col`) of the --start X,Y flags, each on the map.
    pub(super) fn start_cells(&self, start: &[String]) -> Result<Vec<usize>> {
        let grid = &self.problem.grid;
        start
            .iter()
            .map(|text| {
                let (x, y) = parse_pair(text, ',', "--start")?;
                ensure!(
                    x < grid.width && y < grid.height,
                    "--start X={x},Y={y} is off the {}x{} map",
                    grid.width,
                    grid.height
                );
                Ok(y * grid.width + x)
            })
            .collect()
    }
}

/// A world of the command line as a tabular MDP: an `--mdp` file, or a grid batch through
/// [`softvi::world::grid_mdp::GridMdp`].
pub(super) struct MdpWorld {
    /// The MDP.
    pub(super) mdp: softvi::world::mdp::TabularMdp,
    /// The grid world and its cell/state maps, for a grid.
    pub(super) grid: Option<(World, softvi::world::grid_mdp::GridMdp)>,
    /// Where the world came from, for summary.json.
    pub(super) source: serde_json::Value,
}

impl MdpWorld {
    /// Builds the world of `args`; `start` holds the --start X,Y flags (grids only).
    pub(super) fn build(args: &WorldArgs, start: &[String]) -> Result<Self> {
        if let Some(path) = &args.mdp {
            let mdp = softvi::world::mdp::TabularMdp::load_npz(path)?;
            let source = json!({
                "path": path_json(path, "--mdp")?,
                "states": mdp.states,
                "actions": mdp.actions,
                "nonzeros": mdp.nonzeros(),
            });
            return Ok(Self {
                mdp,
                grid: None,
                source,
            });
        }
        let world = args.build()?;
        let p = &world.problem;
        let starts = world.start_cells(start)?;
        let grid_mdp =
            softvi::world::grid_mdp::GridMdp::new(p, (!starts.is_empty()).then_some(&starts[..]))?;
        let source = json!({
            "source": world.source,
            "map": world.map,
            "height": p.grid.height,
            "width": p.grid.width,
            "actions": p.actions.names(),
            "slip": p.slip,
            "goals": world.goals,
            "starts": starts.iter().map(|c| [c % p.grid.width, c / p.grid.width]).collect::<Vec<_>>(),
        });
        Ok(Self {
            mdp: grid_mdp.mdp.clone(),
            grid: Some((world, grid_mdp)),
            source,
        })
    }

    /// The label users see for state `s`: the cell `row * W + col` on a grid, else `s`.
    pub(super) fn state_label(&self, s: i32) -> i32 {
        match (&self.grid, s) {
            (Some((_, g)), s) if s >= 0 => g.cell_of_state[s as usize] as i32,
            _ => s,
        }
    }

    /// The state of a user's label (inverse of [`MdpWorld::state_label`]); `None` off the
    /// world or on a blocked cell.
    pub(super) fn state_of_label(&self, label: usize) -> Option<usize> {
        match &self.grid {
            Some((_, g)) => g
                .state_of_cell
                .get(label)
                .filter(|&&s| s != softvi::world::grid_mdp::NO_STATE)
                .map(|&s| s as usize),
            None => (label < self.mdp.states).then_some(label),
        }
    }

    /// Shape of one task's per-state array: `[S]`, or `[H, W]` on a grid.
    pub(super) fn state_shape(&self) -> Vec<usize> {
        match &self.grid {
            Some((_, g)) => vec![g.height, g.width],
            None => vec![self.mdp.states],
        }
    }
}
