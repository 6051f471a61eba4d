//! What is built on the solvers: sampling trajectories, task inference, MaxEnt IRL, the
//! MovingAI scenario check, soft Q-learning from data, meta-RL as task inference and pictures
//! of results.

pub mod infer;
pub mod irl;
pub mod meta;
pub mod qlearn;
pub mod render;
pub mod sample;
pub mod scen;
