//! What is built on the solvers: sampling trajectories, task inference, MaxEnt IRL, the
//! MovingAI scenario check and pictures of results.

pub mod infer;
pub mod irl;
pub mod qlearn;
pub mod render;
pub mod sample;
pub mod scen;
