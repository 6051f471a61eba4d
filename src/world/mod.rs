//! The worlds a solve runs on: gridworlds (a map, its actions and a batch of tasks), general
//! tabular MDPs in CSR form, a grid batch seen as a tabular MDP over its free cells, and the
//! shards of a batch (contiguous task ranges).
//! Imports nothing from the engine.

pub mod grid;
pub mod grid_mdp;
pub mod grid_problem;
pub mod mdp;
pub mod shard;

pub use grid::{ActionSet, Connectivity, Grid, MoveCost};
pub use grid_mdp::GridMdp;
pub use grid_problem::{GridProblem, GridTask};
pub use mdp::TabularMdp;
