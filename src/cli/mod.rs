//! The `softvi` command line: argument definitions and the commands they run.
//!
//! One file per command (`solve`, `merge`, `sample`, `qlearn`, `infer`, `irl`, `meta`, `render`, `scen`,
//! `bench`, `adapters`), each with its `XxxArgs`; what several commands share lives in `world` (the
//! world and task flags, the batch they build), `iteration` (the solve settings), `backend`
//! (choosing and running a backend) and `summary` (summary.json and the progress line).

use anyhow::Result;
use clap::{Parser, Subcommand};

mod adapters;
mod backend;
mod bench;
mod infer;
mod irl;
mod iteration;
mod merge;
mod meta;
mod qlearn;
mod render;
mod sample;
mod scen;
mod solve;
mod summary;
mod world;

use adapters::adapters_command;
use bench::{BenchArgs, bench_command};
use infer::{InferArgs, infer_command};
use irl::{IrlArgs, irl_command};
use merge::{MergeArgs, merge_command};
use meta::{MetaArgs, meta_command};
use qlearn::{QlearnArgs, qlearn_command};
use render::{RenderArgs, render_command};
use sample::{SampleArgs, sample_command};
use scen::{ScenArgs, scen_command};
use solve::{SolveArgs, solve_command};

/// Exit code of a solve that diverged (no finite values exist).
const EXIT_DIVERGED: i32 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "softvi",
    version,
    about = "Batched soft value iteration (max-ent RL / control as inference) on wgpu",
    long_about = "Batched soft value iteration: the soft-optimal V, Q and policy \
pi(a|s) = exp((Q - V)/alpha) of many tasks over one world, computed by WGSL compute shaders \
on any wgpu adapter (Vulkan, Metal, DX12, GL) and checked against a CPU reference.",
    after_help = "Example:\n  softvi solve --maze 127x127 --goal 1,1 --goal 125,125 --alpha 0.1 --gamma 0.999 --out out"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Solve a batch of tasks, gridworld goals (one task each) or a general MDP (--mdp), and
    /// write values, policy, summary.
    #[command(
        after_help = "Examples:\n  softvi solve --maze 127x127 --goal 1,1 --goal 125,125 --alpha 0.1 --out out\n  \
softvi solve --map den312d.map --goals goals.txt --alpha 0.1 --gamma 1 --backend cpu --out out\n  \
softvi solve --mdp mdp.npz --horizon 50 --all-steps --occupancy --out out
  \
softvi solve --maze 63x63 --goal 1,1 --alpha 0.1 --occupancy --start 61,61 --out out"
    )]
    Solve(SolveArgs),
    /// Join the folders of `softvi solve --tasks I/N` shards into the folder the whole solve
    /// would have written: checks that they are shards of one world, batch and settings
    /// covering every task once, and joins every array and per-task list in task order.
    #[command(
        after_help = "Example (a Slurm job array of 16 shards, then the merge):\n  \
softvi solve --map den520d.map --goals goals.txt --alpha 0.1 --tasks $SLURM_ARRAY_TASK_ID/16 --out shards/$SLURM_ARRAY_TASK_ID\n  \
softvi merge --out all shards/*\n\n\
Shard I of N solves tasks I*B/N .. (I+1)*B/N (floor). Nothing is written when the shards do \
not fit together; the error names the gap, the overlap or the first differing setting."
    )]
    Merge(MergeArgs),
    /// Draw a solve's output folder as a PNG: value, policy, entropy or occupancy heatmaps,
    /// policy arrows, sampled trajectories.
    #[command(
        after_help = "Examples:\n  softvi render --from out --out value.png\n  \
softvi render --from out --task 1 --layer policy --trajectories 20 --seed 3 --out policy.png\n\n\
Walls are black, goals magenta, cells with no finite value grey; the colour bar under the map \
runs from the lowest (left) to the highest (right) value over free non-goal cells, both \
printed under it and on stdout. Maps over 2048 cells on a side are downsampled."
    )]
    Render(RenderArgs),
    /// Draw trajectories from the soft-optimal policy of each task: states.npy int32
    /// [B,N,T+1], actions.npy int32 [B,N,T] (-1 after termination).
    #[command(
        after_help = "Examples:\n  softvi sample --maze 63x63 --goal 1,1 --alpha 0.1 --start 61,61 --episodes 1000 --steps 400 --out samples\n  \
softvi sample --mdp mdp.npz --horizon 50 --episodes 100 --seed 7 --out samples\n\n\
Grid states are cells row * W + col. An episode stops at a terminal (goal) state, which is \
recorded; later states and actions are -1. Each (task, episode) draws from its own stream of \
--seed, so a seed reproduces its samples on a given backend."
    )]
    Sample(SampleArgs),
    /// Soft Q-learning from a dataset of transitions (s, a, r, s', done): fitted soft Q
    /// iteration to its fixed point, which is soft value iteration on the data's empirical MDP.
    /// Writes q.npy [B,S,A], values.npy, policy.npy, summary.json.
    #[command(
        after_help = "Examples:\n  softvi sample --maze 15x15 --goal 1,1 --behaviour uniform --episodes 2000 --steps 50 --out samples\n  \
softvi qlearn --data samples/dataset.npz --maze 15x15 --alpha 1 --gamma 0.95 --out learned\n  \
softvi qlearn --data data.npz --states 20 --actions 4 --alpha 0 --backend cpu --out learned\n\n\
Targets y = r + gamma (1 - done) alpha log sum_a' exp(Q(s',a')/alpha); the tabular fit is \
the mean target per (s,a), i.e. the soft backup of the MDP with P(s'|s,a) = N(s,a,s')/N(s,a) \
and mean rewards. Pairs the data never shows are left out of the soft max (NaN in q.npy); a \
state with no seen action has no value (NaN), and a transition into it bootstraps 0."
    )]
    Qlearn(QlearnArgs),
    /// Posterior over the tasks (goals, rewards or MDP reward batches) after each step of an
    /// observed trajectory: posterior.npy float32 [K+1,B], rows summing to 1.
    #[command(
        after_help = "Examples:\n  softvi infer --maze 63x63 --goal 1,1 --goal 61,61 --goal 1,61 --alpha 0.1 --trajectory walk.txt --out post\n  \
softvi infer --mdp mdp.npz --prior prior.npy --trajectory walk.txt --out post\n\n\
log p(z | tau) = log p(z) + sum_t log pi_z(a_t|s_t) with observed actions, or \
sum_t log sum_a pi_z(a|s_t) P(s_{t+1}|s_t,a) without; --alpha is the agent's rationality \
temperature (small = near-optimal). A task whose episode would have ended (its goal passed) \
gets probability 0; a step no task explains is an error naming its line."
    )]
    Infer(InferArgs),
    /// Learn linear reward weights theta for state features from demonstrations (maximum
    /// causal entropy IRL): theta.npy [M,K], reward.npy, per-iteration log-likelihood.
    #[command(after_help = "Example (recover a known reward):\n  \
softvi sample --maze 31x31 --goal 29,29 --reward true_reward.npy --horizon 40 --episodes 500 --out demos\n  \
softvi irl --maze 31x31 --goal 29,29 --features features.npy --demos demos/states.npy --demo-actions demos/actions.npy --out learned\n\n\
Each iteration solves the world with reward (its own, e.g. move costs) + theta . phi(s) backward \
and forward, and steps theta along mu_demos - mu_model (feature expectations, discounted by \
gamma^t) with Adam. The horizon is the demo length unless --discounted.")]
    Irl(IrlArgs),
    /// Meta-RL as inference over a latent task: posterior sampling (sample z from the posterior
    /// before each episode, act with pi_z) against an oracle and a prior-only agent, on every
    /// true task of a batch: meta.json (mean return per episode, standard errors, posterior
    /// mass on the true task) and returns.png.
    #[command(
        after_help = "Example (the sparse-goal world: 7 goals on a half ring, reward 1 at the goal):\n  \
softvi meta --map tests/data/half_ring.map --goals tests/data/half_ring_goals.txt --start 7,8 \
--move-cost 0,0 --goal-value 1 --alpha 0.01 --gamma 0.9 --steps 15 --episodes 10 --trials 30 --out meta\n\n\
The agent does not know its task; it observes rewards and terminations (exactly, or with \
--reward-noise) and updates the posterior over the batch after each episode (on the solve's \
device). Returns are undiscounted: the true task's rewards plus the terminal value where the \
episode ended. Where the sampled task's policy has no action (its goal, not the true one), the \
agent acts uniformly."
    )]
    Meta(MetaArgs),
    /// Solve the distinct goals of a MovingAI scenario file as one batch and compare the soft
    /// value at each start with the published optimal length.
    #[command(
        after_help = "Example:\n  softvi scen --map den312d.map --scen den312d.map.scen --limit 100\n\n\
gap = -V(start) - optimal_length for alpha > 0, where it is negative (the soft value adds the \
entropy of near-optimal alternatives). At --alpha 0 the gap is taken on `path`, the f64 length \
of the path the solve's greedy policy takes from the start, which is exact; `max |V gap|` \
reports the f32 value's own gap, which grows with the path length (f32 rounding)."
    )]
    Scen(ScenArgs),
    /// Measure sweep throughput of the standard workloads on the GPU path and the CPU
    /// reference in one run.
    #[command(
        after_help = "Examples:\n  softvi bench\n  softvi bench --workload maze1024-b1 --sweeps 128"
    )]
    Bench(BenchArgs),
    /// List the wgpu adapters this machine offers (honours WGPU_BACKEND / WGPU_ADAPTER_NAME).
    #[command(after_help = "Example:\n  WGPU_BACKEND=gl softvi adapters")]
    Adapters,
}

/// Runs the parsed command line; returns the exit code.
pub(crate) fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Solve(args) => solve_command(&args),
        Command::Merge(args) => merge_command(&args),
        Command::Scen(args) => scen_command(&args),
        Command::Render(args) => render_command(&args),
        Command::Sample(args) => sample_command(&args),
        Command::Qlearn(args) => qlearn_command(&args),
        Command::Infer(args) => infer_command(&args),
        Command::Irl(args) => irl_command(&args),
        Command::Meta(args) => meta_command(&args),
        Command::Bench(args) => bench_command(&args),
        Command::Adapters => adapters_command(),
    }
}
