//! `softvi._softvi`: the PyO3 extension module behind the `softvi` Python package. It binds the
//! library's solver traits and worlds; the pure-Python layer (`python/softvi/`) shapes the
//! inputs (one conversion to contiguous float64 / float32 / bool arrays) and the results.
//!
//! Every solve releases the GIL (`Python::detach`); results are handed to NumPy without a
//! copy (`PyArray::from_vec` owns the engine's `Vec`, `reshape` makes a view of it).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, MutexGuard};

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{
    PyFileNotFoundError, PyMemoryError, PyOSError, PyRuntimeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use softvi::engine::cpu::{MdpCotangents, mdp_vjp_cpu_at, solve_mdp_cpu_f64};
use softvi::engine::gpu::grid_vjp::check_grid_solvable;
use softvi::engine::gpu::{GpuContext, TaskPosterior};
use softvi::engine::native::{default_threads, mdp_vjp_native};
use softvi::infer::{Observation, check_possible, posterior_inputs};
use softvi::io::npy::NpyValues;
use softvi::irl::{Demos, IrlOptions};
use softvi::{
    ActionSet, Backup, Connectivity, CpuReference, Error, GpuSolver, Grid, GridProblem, GridSolver,
    GridTask, Horizon, MdpSolution, MdpSolver, Method, MoveCost, NativeSolver, OnProgress, Outputs,
    Progress, Real, SolveOptions, TabularMdp,
};

// The command line, compiled from the binary's own sources: `softvi` installed by the wheel
// is the same program as `cargo install softvi`.
#[path = "../../src/cli/mod.rs"]
mod cli;

// The full module path, so that pickle (multiprocessing, Ray) finds the class again.
create_exception!(
    softvi._softvi,
    DeviceError,
    PyRuntimeError,
    "No usable GPU adapter (device=\"gpu\" or an adapter index), or the GPU failed while running."
);

/// A library error as the Python exception a user expects: bad input `ValueError`, no adapter
/// or a GPU failure `DeviceError`, a size limit `MemoryError`, a file `OSError`.
fn to_py(e: Error) -> PyErr {
    match e {
        Error::InvalidInput(m) => PyValueError::new_err(m),
        Error::NoAdapter(m) => DeviceError::new_err(m),
        Error::Gpu(_) => DeviceError::new_err(e.to_string()),
        Error::LimitExceeded { .. } => PyMemoryError::new_err(e.to_string()),
        Error::Io { ref source, .. } => {
            let message = format!("{e}: {source}");
            if source.kind() == std::io::ErrorKind::NotFound {
                PyFileNotFoundError::new_err(message)
            } else {
                PyOSError::new_err(message)
            }
        }
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// A validated batch of tabular MDPs (the library's `TabularMdp`), built by
/// `softvi.TabularMDP`.
#[pyclass(name = "Mdp", module = "softvi._softvi", frozen)]
struct PyMdp {
    inner: TabularMdp,
}

#[pymethods]
impl PyMdp {
    /// States S.
    #[getter]
    fn states(&self) -> usize {
        self.inner.states
    }

    /// Actions A.
    #[getter]
    fn actions(&self) -> usize {
        self.inner.actions
    }

    /// Tasks B.
    #[getter]
    fn tasks(&self) -> usize {
        self.inner.tasks
    }

    /// Nonzero transition entries.
    #[getter]
    fn nonzeros(&self) -> usize {
        self.inner.nonzeros()
    }

    /// The arrays in the CLI's `.npz` names: `indptr`, `indices`, `data` (CSR over rows
    /// `s*A+a`), `R` `[B,S,A]`, `terminal`, `terminal_value`, `initial` `[B,S]` (copies).
    fn arrays<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = &self.inner;
        let (b, s, a) = (m.tasks, m.states, m.actions);
        let out = PyDict::new(py);
        // A dense model's CSR is built here on first use.
        let csr = py.detach(|| m.csr());
        out.set_item("indptr", PyArray1::from_slice(py, &csr.indptr))?;
        out.set_item("indices", PyArray1::from_slice(py, &csr.indices))?;
        out.set_item("data", PyArray1::from_slice(py, &csr.probs))?;
        out.set_item("R", PyArray1::from_slice(py, &m.reward).reshape([b, s, a])?)?;
        out.set_item(
            "terminal",
            PyArray1::from_slice(py, &m.terminal).reshape([b, s])?,
        )?;
        out.set_item(
            "terminal_value",
            PyArray1::from_slice(py, &m.terminal_value).reshape([b, s])?,
        )?;
        out.set_item(
            "initial",
            PyArray1::from_slice(py, &m.initial).reshape([b, s])?,
        )?;
        Ok(out)
    }

    /// This MDP with the rewards `reward` (float64, as `mdp_from_arrays` reads `R`), the
    /// transitions kept as they are, not converted and checked again (`TabularMdp::with_reward`).
    fn with_reward(&self, py: Python<'_>, reward: PyReadonlyArrayDyn<'_, f64>) -> PyResult<PyMdp> {
        let r = NpyValues {
            shape: reward.shape().to_vec(),
            data: reward.as_array().iter().copied().collect(),
            dtype: "<f8".into(),
        };
        let inner = py.detach(|| self.inner.with_reward(&r)).map_err(to_py)?;
        Ok(PyMdp { inner })
    }
}

/// Named float64 arrays as the library's `.npz` entries read them, in logical (C) order
/// whatever the strides.
fn npy_values(arrays: HashMap<String, PyReadonlyArrayDyn<'_, f64>>) -> HashMap<String, NpyValues> {
    arrays
        .into_iter()
        .map(|(name, array)| {
            let values = NpyValues {
                shape: array.shape().to_vec(),
                // A contiguous array is one copy (an element iterator took seconds on 10^8).
                data: match array.as_slice() {
                    Ok(slice) => copy_on_threads(slice),
                    Err(_) => array.as_array().iter().copied().collect(),
                },
                dtype: "<f8".into(),
            };
            (name, values)
        })
        .collect()
}

/// `values` copied on every core: most of a large copy's time is the kernel mapping fresh
/// pages, which the threads then do side by side (a dense P of 10^8 entries).
fn copy_on_threads(values: &[f64]) -> Vec<f64> {
    const SMALL: usize = 1 << 20;
    if values.len() <= SMALL {
        return values.to_vec();
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = vec![0.0; values.len()];
    let per = values.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (dst, src) in out.chunks_mut(per).zip(values.chunks(per)) {
            scope.spawn(move || dst.copy_from_slice(src));
        }
    });
    out
}

/// Builds an MDP from arrays named as in the CLI's `.npz` (`P` or `indptr`/`indices`/`data`,
/// `R`, optional `terminal`, `terminal_value`, `initial`), validated by the library.
#[pyfunction]
fn mdp_from_arrays(
    py: Python<'_>,
    arrays: HashMap<String, PyReadonlyArrayDyn<'_, f64>>,
) -> PyResult<PyMdp> {
    let values = npy_values(arrays);
    let inner = py
        .detach(|| TabularMdp::from_array_map(values))
        .map_err(to_py)?;
    Ok(PyMdp { inner })
}

/// A C-contiguous float64 NumPy array read in place as a model's dense rows.
struct ArrayRows {
    /// Keeps the array (and so its memory) alive while the model lives.
    _array: Py<PyArrayDyn<f64>>,
    data: *const f64,
    len: usize,
}

// SAFETY: the rows are only read, from any thread; the array's memory stays where it is while
// `_array` holds a reference (NumPy does not move or resize a referenced array's data), and
// `mdp_from_dense_in_place`'s caller keeps its entries unchanged while the model lives.
unsafe impl Send for ArrayRows {}
// SAFETY: as for `Send`: shared access only reads.
unsafe impl Sync for ArrayRows {}

impl softvi::world::mdp::DenseRows for ArrayRows {
    fn rows(&self) -> &[f64] {
        // SAFETY: `data` points at `len` initialised, aligned f64 (a C-contiguous float64
        // array, checked when built) that live as long as `_array` (see `Send`).
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }
}

/// Builds an MDP whose dense `P` `[S,A,S]` is read in place from `p` (no copy of its
/// entries; where under half of them are nonzero it becomes CSR as in `mdp_from_arrays`); the
/// other arrays as `mdp_from_arrays` reads them. The caller must keep `p`'s entries unchanged
/// while the model lives (`softvi.compat.imitation` builds one for a single solve).
#[pyfunction]
fn mdp_from_dense_in_place(
    py: Python<'_>,
    p: Bound<'_, PyArrayDyn<f64>>,
    arrays: HashMap<String, PyReadonlyArrayDyn<'_, f64>>,
) -> PyResult<PyMdp> {
    if !p.is_c_contiguous() || !(p.data() as usize).is_multiple_of(std::mem::align_of::<f64>()) {
        return Err(PyValueError::new_err(
            "transitions must be a C-contiguous, aligned float64 array to be read in place",
        ));
    }
    let shape = p.shape().to_vec();
    let rows = ArrayRows {
        data: p.data(),
        len: p.len(),
        _array: p.unbind(),
    };
    let values = npy_values(arrays);
    let inner = py
        .detach(|| TabularMdp::from_dense_in_place(Box::new(rows), &shape, values))
        .map_err(to_py)?;
    Ok(PyMdp { inner })
}

/// Reads an MDP from an `.npz` file in the CLI's format.
#[pyfunction]
fn load_npz(py: Python<'_>, path: PathBuf) -> PyResult<PyMdp> {
    let inner = py.detach(|| TabularMdp::load_npz(&path)).map_err(to_py)?;
    Ok(PyMdp { inner })
}

/// A built-in maze's free cells, `bool [H,W]`.
#[pyfunction]
fn maze<'py>(
    py: Python<'py>,
    width: usize,
    height: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyArrayDyn<bool>>> {
    let grid = py
        .detach(|| Grid::generate_maze(width, height, seed))
        .map_err(to_py)?;
    free_array(py, grid)
}

/// A MovingAI `.map` file's free cells, `bool [H,W]`.
#[pyfunction]
fn load_movingai<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyArrayDyn<bool>>> {
    let grid = py.detach(|| Grid::load_movingai(&path)).map_err(to_py)?;
    free_array(py, grid)
}

fn free_array(py: Python<'_>, grid: Grid) -> PyResult<Bound<'_, PyArrayDyn<bool>>> {
    PyArray1::from_vec(py, grid.free).reshape(vec![grid.height, grid.width])
}

/// The wgpu adapters the environment allows (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`), preferred
/// first: `"name (backend)"` each; the index is what `device=` takes.
#[pyfunction]
fn adapters(py: Python<'_>) -> PyResult<Vec<String>> {
    let adapters = py.detach(GpuContext::adapters_from_env).map_err(to_py)?;
    Ok(adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            format!("{} ({})", info.name, info.backend)
        })
        .collect())
}

/// Per adapter, in [`adapters`] order: `name`, `backend`, `device_type` (wgpu's `DeviceType`
/// as a lowercase word: `discretegpu`, `integratedgpu`, `virtualgpu`, `cpu`, `other`) and
/// `pci_bus_id` (`"0000:01:00.0"`; empty where the backend does not report one). `softvi.ray`
/// matches it to the GPU a Ray worker was assigned.
#[pyfunction]
fn adapter_info(py: Python<'_>) -> PyResult<Vec<HashMap<&'static str, String>>> {
    let adapters = py.detach(GpuContext::adapters_from_env).map_err(to_py)?;
    Ok(adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            HashMap::from([
                ("name", info.name),
                ("backend", info.backend.to_string()),
                (
                    "device_type",
                    format!("{:?}", info.device_type).to_lowercase(),
                ),
                ("pci_bus_id", info.device_pci_bus_id),
            ])
        })
        .collect())
}

/// Where a solve runs, as `device=` said it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Device {
    /// The first adapter if there is one, else the CPU reference.
    Auto,
    /// The CPU reference (f64).
    Cpu,
    /// The adapter the environment prefers (`None`) or the one at this index.
    Gpu(Option<usize>),
}

/// GPU solvers opened so far, by adapter (`None`: the preferred one), kept for the process so
/// that a device is opened and each pipeline compiled once; `Err` remembers why there is none.
type SolverCache = HashMap<Option<usize>, Result<GpuSolver, String>>;

static SOLVERS: LazyLock<Mutex<SolverCache>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn solvers() -> MutexGuard<'static, SolverCache> {
    // A panic inside a solve poisons nothing the cache relies on.
    SOLVERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The GPU solver on `adapter`, opened on first use; `Error::NoAdapter` when there is none.
fn gpu_solver(cache: &mut SolverCache, adapter: Option<usize>) -> softvi::Result<&mut GpuSolver> {
    let entry = cache.entry(adapter).or_insert_with(|| {
        let context = match adapter {
            None => GpuContext::from_env(),
            Some(i) => GpuContext::adapters_from_env().and_then(|list| {
                let n = list.len();
                let adapter = list.into_iter().nth(i).ok_or_else(|| {
                    Error::NoAdapter(format!(
                        "device={i}: there are {n} adapter(s), numbered from 0 (see \
                         softvi.adapters())"
                    ))
                })?;
                GpuContext::from_adapter(adapter)
            }),
        };
        context.map(GpuSolver::new).map_err(|e| e.to_string())
    });
    match entry {
        Ok(solver) => Ok(solver),
        Err(why) => Err(Error::NoAdapter(format!(
            "{why} (device=\"cpu\" runs on the CPU reference)"
        ))),
    }
}

/// The solver `device` picked: the CPU reference (with its label for `adapter`) or a GPU
/// solver from the cache.
enum Picked<'a> {
    Cpu(String),
    Gpu(&'a mut GpuSolver),
}

/// Runs `run` on what `device` picks: the GPU solver (opened on first use), or the CPU
/// reference for `"cpu"` and for `"auto"` without an adapter.
fn with_device<R>(
    device: Device,
    run: impl FnOnce(Picked<'_>) -> softvi::Result<R>,
) -> softvi::Result<R> {
    if device == Device::Cpu {
        return run(Picked::Cpu(MdpSolver::label(&CpuReference)));
    }
    let mut cache = solvers();
    let adapter = match device {
        Device::Gpu(i) => i,
        _ => None,
    };
    match gpu_solver(&mut cache, adapter) {
        Ok(gpu) => run(Picked::Gpu(gpu)),
        Err(Error::NoAdapter(_)) if device == Device::Auto => {
            drop(cache);
            run(Picked::Cpu(format!(
                "{} (no GPU adapter: {})",
                MdpSolver::label(&CpuReference),
                softvi::engine::gpu::context::NO_ADAPTER_HELP
                    .split('.')
                    .next()
                    .unwrap_or("none found")
            )))
        }
        Err(e) => Err(e),
    }
}

/// Whether `device="auto"` runs plain grid solves on the native engine, as the CLI's
/// `--backend auto` does: the preferred adapter is a CPU (a software rasteriser such as
/// llvmpipe, where the native engine sweeps grids several times faster), or there is none.
fn software_only() -> bool {
    let mut cache = solvers();
    match gpu_solver(&mut cache, None) {
        Ok(gpu) => gpu.context().info.device_type == softvi::wgpu::DeviceType::Cpu,
        Err(_) => true,
    }
}

/// Runs `solve` on the solver `device` picks; returns its result and the solver's label.
fn with_solver<R>(
    device: Device,
    solve: impl FnOnce(&mut dyn Solver) -> softvi::Result<R>,
) -> softvi::Result<(R, String)> {
    with_device(device, |picked| match picked {
        Picked::Cpu(label) => Ok((solve(&mut CpuReference)?, label)),
        Picked::Gpu(gpu) => {
            let label = MdpSolver::label(gpu);
            Ok((solve(gpu)?, label))
        }
    })
}

/// Runs `solve` without the GIL, handing it a progress callback that runs Python's signal
/// handlers as [`detached_until`] does, at convergence checks: Ctrl-C's `KeyboardInterrupt`
/// (or any exception a handler raises) stops the solve and is raised here.
fn solve_detached<R: Send>(
    py: Python<'_>,
    solve: impl FnOnce(&mut OnProgress<'_>) -> softvi::Result<R> + Send,
) -> PyResult<R> {
    detached_until(py, |stop| solve(&mut |_: &Progress| stop()))
}

/// Runs `work` without the GIL, handing it a stop check that takes the GIL at most every 50 ms
/// to run Python's signal handlers: Ctrl-C's `KeyboardInterrupt` stops sampling and meta-RL
/// runs (which have no convergence checks) within one episode, and is raised here.
fn detached_until<R: Send>(
    py: Python<'_>,
    work: impl FnOnce(&mut dyn FnMut() -> ControlFlow<()>) -> softvi::Result<R> + Send,
) -> PyResult<R> {
    let mut raised: Option<PyErr> = None;
    let result = py.detach(|| {
        let mut last = std::time::Instant::now();
        work(&mut || {
            if last.elapsed() < std::time::Duration::from_millis(50) {
                return ControlFlow::Continue(());
            }
            last = std::time::Instant::now();
            match Python::attach(|py| py.check_signals()) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    raised = Some(e);
                    ControlFlow::Break(())
                }
            }
        })
    });
    match (result, raised) {
        (Err(Error::Cancelled { .. }), Some(e)) => Err(e),
        (result, _) => result.map_err(to_py),
    }
}

/// Both solver traits, so one picked solver serves grid and MDP solves.
trait Solver: MdpSolver + GridSolver {
    fn as_mdp(&mut self) -> &mut dyn MdpSolver;
    fn as_grid(&mut self) -> &mut dyn GridSolver;
}

impl<T: MdpSolver + GridSolver> Solver for T {
    fn as_mdp(&mut self) -> &mut dyn MdpSolver {
        self
    }
    fn as_grid(&mut self) -> &mut dyn GridSolver {
        self
    }
}

/// The keywords every solve takes, as the dict `softvi._solve._settings` builds them: one
/// definition for every entry point.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct Settings {
    alpha: f64,
    gamma: f64,
    backup: String,
    horizon: Option<u32>,
    tol: f64,
    max_iters: u32,
    extrapolate: bool,
    policy: bool,
    q: bool,
    all_steps: bool,
    occupancy: bool,
    device: String,
    adapter: Option<usize>,
    method: String,
    evaluations: Option<u32>,
}

impl Settings {
    /// The library's settings, validated.
    fn options(&self) -> PyResult<SolveOptions> {
        let backup = match self.backup.as_str() {
            "expected" => Backup::Expected,
            "optimistic" => Backup::Optimistic,
            other => {
                return Err(PyValueError::new_err(format!(
                    "backup must be \"expected\" or \"optimistic\", got {other:?}"
                )));
            }
        };
        let horizon = match self.horizon {
            Some(t) => Horizon::Finite(t),
            None => Horizon::Infinite {
                tol: self.tol,
                max_iters: self.max_iters,
            },
        };
        let method = match self.method.as_str() {
            "vi" => Method::Vi,
            "mpi" => Method::Mpi {
                evaluations: self.evaluations.unwrap_or(Method::DEFAULT_EVALUATIONS),
            },
            other => {
                return Err(PyValueError::new_err(format!(
                    "method must be \"vi\" or \"mpi\", got {other:?}"
                )));
            }
        };
        let options = SolveOptions {
            alpha: self.alpha,
            gamma: self.gamma,
            backup,
            horizon,
            extrapolate: self.extrapolate,
            method,
        };
        options.validate().map_err(to_py)?;
        Ok(options)
    }

    /// The outputs asked for.
    fn outputs(&self) -> Outputs {
        Outputs {
            policy: self.policy,
            q: self.q,
            all_steps: self.all_steps,
            occupancy: self.occupancy,
        }
    }

    /// Where the solve runs.
    fn device(&self) -> PyResult<Device> {
        parse_device(&self.device, self.adapter)
    }
}

fn parse_device(device: &str, adapter: Option<usize>) -> PyResult<Device> {
    match (device, adapter) {
        // What the native engine does not do (every step and the occupancy of a grid) runs as
        // "auto".
        ("auto" | "native", None) => Ok(Device::Auto),
        ("cpu", None) => Ok(Device::Cpu),
        ("gpu", i) => Ok(Device::Gpu(i)),
        _ => Err(PyValueError::new_err(format!(
            "device must be \"auto\", \"gpu\", \"native\", \"cpu\" or an adapter index, got \
             {device:?}"
        ))),
    }
}

/// A flat engine array as a NumPy array of `shape`, owning the `Vec` (no copy).
fn array<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: Vec<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, data).reshape(shape)?.into_any())
}

/// A solution as a dict of NumPy arrays and per-task lists, every array with its B axis:
/// values `[B, *state_shape]` (`[B,T+1,...]` with every step), policy and q
/// `[B, *state_shape, A]` (`[B,T,...,A]`), occupancy `[B, *state_shape]` (`[B,T+1,...]` for a
/// finite horizon), as the CLI writes them.
fn solution_dict<'py, T: Real + numpy::Element>(
    py: Python<'py>,
    solved: MdpSolution<T>,
    state_shape: &[usize],
    adapter: String,
) -> PyResult<Bound<'py, PyDict>> {
    let MdpSolution {
        solution,
        steps,
        occupancy,
    } = solved;
    let tasks = solution.iterations.len();
    let a = solution.action_count;
    let with = |lead: &[usize], tail: &[usize]| [&[tasks], lead, state_shape, tail].concat();
    let out = PyDict::new(py);
    let none = py.None();
    match steps {
        Some(steps) => {
            let t = steps.values.len() / solution.values.len().max(1);
            out.set_item("values", array(py, steps.values, with(&[t], &[]))?)?;
            let lead = [t.saturating_sub(1)];
            for (name, data) in [("policy", steps.policy), ("q", steps.q)] {
                match data {
                    Some(d) => out.set_item(name, array(py, d, with(&lead, &[a]))?)?,
                    None => out.set_item(name, &none)?,
                }
            }
        }
        None => {
            out.set_item("values", array(py, solution.values, with(&[], &[]))?)?;
            for (name, data) in [("policy", solution.policy), ("q", solution.q)] {
                match data {
                    Some(d) => out.set_item(name, array(py, d, with(&[], &[a]))?)?,
                    None => out.set_item(name, &none)?,
                }
            }
        }
    }
    match occupancy {
        Some(d) => {
            let lead: &[usize] = if d.steps > 1 { &[d.steps] } else { &[] };
            out.set_item("occupancy", array(py, d.values, with(lead, &[]))?)?;
            let status: Vec<&str> = d.status.iter().map(|s| s.name()).collect();
            out.set_item("occupancy_status", status)?;
            out.set_item("occupancy_residual", d.residual)?;
            out.set_item("occupancy_iterations", d.iterations)?;
        }
        None => out.set_item("occupancy", &none)?,
    }
    let status: Vec<&str> = solution.status.iter().map(|s| s.name()).collect();
    out.set_item("status", status)?;
    out.set_item("iterations", solution.iterations)?;
    out.set_item("residual", solution.residual)?;
    out.set_item("error_bound", solution.error_bound)?;
    out.set_item("unreachable", solution.unreachable)?;
    out.set_item("seconds", solution.seconds)?;
    out.set_item("adapter", adapter)?;
    Ok(out)
}

/// Solves every task of `mdp` (see `softvi.solve`).
#[pyfunction]
fn solve_mdp<'py>(
    py: Python<'py>,
    mdp: Py<PyMdp>,
    settings: Settings,
) -> PyResult<Bound<'py, PyDict>> {
    let (options, outputs, device) = (settings.options()?, settings.outputs(), settings.device()?);
    let model = &mdp.get().inner;
    // The CPU reference reports its f64 arrays as they are; a GPU and the native engine their
    // f32 ones.
    let solved = solve_detached(py, |progress| {
        let native = match settings.device.as_str() {
            "native" => true,
            "auto" => software_only(),
            _ => false,
        };
        if native {
            let mut solver = NativeSolver::new(None);
            let solved = solver.solve_mdp(model, &options, outputs, progress)?;
            return Ok(Err((solved, MdpSolver::label(&solver))));
        }
        with_device(device, |picked| match picked {
            Picked::Cpu(label) => {
                let solved = solve_mdp_cpu_f64(model, &options, outputs, progress)?;
                Ok(Ok((solved, label)))
            }
            Picked::Gpu(gpu) => {
                let solved = gpu.solve_mdp(model, &options, outputs, progress)?;
                Ok(Err((solved, MdpSolver::label(gpu))))
            }
        })
    })?;
    match solved {
        Ok((exact, label)) => solution_dict(py, exact, &[model.states], label),
        Err((rounded, label)) => solution_dict(py, rounded, &[model.states], label),
    }
}

/// The vector-Jacobian product of `mdp`'s solve on `settings.device` (see `softvi.vjp`): the
/// native engine as [`vjp_on_native`] picks it, the GPU engine's f32 VJP (`MdpEngine::vjp`)
/// for `"gpu"`, an adapter index, or `"auto"` with a hardware adapter, else the f64 reference:
/// cotangents on the values, Q and the policy as `solve` returns them with every task axis
/// (`[B,S]`, `[B,S,A]`; `[B,T+1,S]`, `[B,T,S,A]` with `all_steps`), none for a zero one.
/// Returns the gradients: `reward` `[B,S,A]`, `terminal_value` `[B,S]`, `probs` `[nnz]` (CSR
/// order), `alpha`, `gamma`, the adjoint's `sweeps`, the `device` and which `kernels` ran it
/// (`"native"`, `"reference"`, `"grid"` or `"csr"`). `solution`: the forward solve's V
/// `[B,S]` (infinite horizon) to start from instead of solving again (the native engine takes
/// it as the fixed point). `grid`: `(free, goals, world)` as `grid_as_mdp` took them when `mdp`
/// is that grid batch's MDP (its own transitions and goals): on a GPU its VJP then runs on the
/// grid kernels (`GridEngine::vjp`) where they can (given the fixed point, or a reward per cell
/// and goals worth 0: `check_grid_solvable`), else on the CSR kernels.
#[pyfunction]
#[pyo3(signature = (mdp, settings, values, q, policy, solution=None, grid=None))]
#[allow(clippy::too_many_arguments)]
fn vjp<'py>(
    py: Python<'py>,
    mdp: Py<PyMdp>,
    settings: Settings,
    values: Option<PyReadonlyArrayDyn<'py, f64>>,
    q: Option<PyReadonlyArrayDyn<'py, f64>>,
    policy: Option<PyReadonlyArrayDyn<'py, f64>>,
    solution: Option<PyReadonlyArrayDyn<'py, f64>>,
    grid: Option<(PyReadonlyArrayDyn<'py, bool>, Vec<Vec<usize>>, GridWorld)>,
) -> PyResult<Bound<'py, PyDict>> {
    let options = settings.options()?;
    let model = &mdp.get().inner;
    let problem = match &grid {
        Some((free, goals, world)) => Some(world.problem(free, goals.clone(), None)?),
        None => None,
    };
    let flat = |x: Option<PyReadonlyArrayDyn<'py, f64>>| {
        x.map(|a| a.as_array().iter().copied().collect::<Vec<f64>>())
    };
    let cotangents = MdpCotangents {
        values: flat(values),
        q: flat(q),
        policy: flat(policy),
        all_steps: settings.all_steps,
    };
    let solution = flat(solution);
    let native = vjp_on_native(&settings.device);
    let device = settings.device()?;
    let (grads, label, kernels) = py
        .detach(|| {
            let start = solution.as_deref();
            if native {
                let label = MdpSolver::label(&NativeSolver::new(None));
                let grads = mdp_vjp_native(model, &options, &cotangents, start, default_threads())?;
                return Ok((grads, label, "native"));
            }
            with_device(device, |picked| match picked {
                Picked::Cpu(label) => {
                    let grads = mdp_vjp_cpu_at(model, &options, &cotangents, start)?;
                    Ok((grads, label, "reference"))
                }
                Picked::Gpu(gpu) => {
                    let label = MdpSolver::label(gpu);
                    let on_grid = problem.as_ref().filter(|problem| {
                        let infinite = matches!(options.horizon, Horizon::Infinite { .. });
                        let given = start.is_some() && infinite;
                        given || check_grid_solvable(problem, model).is_ok()
                    });
                    match on_grid {
                        Some(problem) => {
                            let engine = gpu.grid_engine()?;
                            let grads = engine.vjp(problem, model, &options, &cotangents, start)?;
                            Ok((grads, label, "grid"))
                        }
                        None => {
                            let grads =
                                gpu.mdp_engine()?.vjp(model, &options, &cotangents, start)?;
                            Ok((grads, label, "csr"))
                        }
                    }
                }
            })
        })
        .map_err(to_py)?;
    let (b, s, a) = (model.tasks, model.states, model.actions);
    let out = PyDict::new(py);
    out.set_item("reward", array(py, grads.reward, vec![b, s, a])?)?;
    out.set_item(
        "terminal_value",
        array(py, grads.terminal_value, vec![b, s])?,
    )?;
    out.set_item("probs", array(py, grads.probs, vec![model.nonzeros()])?)?;
    out.set_item("alpha", grads.alpha)?;
    out.set_item("gamma", grads.gamma)?;
    out.set_item("sweeps", grads.sweeps)?;
    out.set_item("device", label)?;
    out.set_item("kernels", kernels)?;
    Ok(out)
}

/// Whether `vjp` runs on the native engine for `device`: as `solve_mdp` picks it (`"native"`,
/// and `"auto"` where the only adapter is a software rasteriser or there is none); the f64
/// reference otherwise.
fn vjp_on_native(device: &str) -> bool {
    match device {
        "native" => true,
        "auto" => software_only(),
        _ => false,
    }
}

/// The world of a gridworld batch besides its map and goals, as `softvi.solve_grid`'s
/// keywords give it.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct GridWorld {
    connectivity: u8,
    stay: bool,
    slip: f64,
    /// Orthogonal, diagonal and STAY move costs.
    move_cost: Option<(f64, f64, f64)>,
    /// Cells `row * W + col` the occupancy starts from (none: uniform).
    starts: Option<Vec<usize>>,
}

impl GridWorld {
    /// The problem over `free` `bool [H,W]` with one task per goal list and, when given, its
    /// reward map (`float32 [B,H,W]`).
    fn problem(
        &self,
        free: &PyReadonlyArrayDyn<'_, bool>,
        goals: Vec<Vec<usize>>,
        reward: Option<&PyReadonlyArrayDyn<'_, f32>>,
    ) -> PyResult<GridProblem> {
        let &[height, width] = free.shape() else {
            return Err(PyValueError::new_err(format!(
                "free has shape {:?}; expected [H,W]",
                free.shape()
            )));
        };
        let grid = Grid {
            height,
            width,
            free: free.as_array().iter().copied().collect(),
        };
        let cells = height * width;
        let rewards: Vec<Option<Vec<f32>>> = match reward {
            None => vec![None; goals.len()],
            Some(r) => {
                if r.shape() != [goals.len(), height, width] {
                    return Err(PyValueError::new_err(format!(
                        "reward has shape {:?}; expected [B,H,W] = [{}, {height}, {width}]",
                        r.shape(),
                        goals.len()
                    )));
                }
                let data: Vec<f32> = r.as_array().iter().copied().collect();
                data.chunks_exact(cells.max(1))
                    .map(|c| Some(c.to_vec()))
                    .collect()
            }
        };
        let connectivity = match self.connectivity {
            4 => Connectivity::Four,
            8 => Connectivity::Eight,
            other => {
                return Err(PyValueError::new_err(format!(
                    "connectivity must be 4 or 8, got {other}"
                )));
            }
        };
        let move_cost = match self.move_cost {
            Some((orthogonal, diagonal, stay)) => MoveCost {
                orthogonal,
                diagonal,
                stay,
            },
            None => MoveCost::default(),
        };
        Ok(GridProblem {
            grid,
            actions: ActionSet {
                connectivity,
                stay: self.stay,
            },
            slip: self.slip,
            move_cost,
            tasks: goals
                .into_iter()
                .zip(rewards)
                .map(|(goals, reward)| GridTask { goals, reward })
                .collect(),
        })
    }
}

/// A gridworld batch as a tabular MDP over its free cells (the grid kernels' transitions and
/// step costs, a zero reward map, goals terminal at 0), and the cell `row * W + col` of each
/// state, `uint32 [S]` (see `softvi.Grid.as_mdp`).
#[pyfunction]
fn grid_as_mdp<'py>(
    py: Python<'py>,
    free: PyReadonlyArrayDyn<'py, bool>,
    goals: Vec<Vec<usize>>,
    world: GridWorld,
) -> PyResult<(PyMdp, Bound<'py, PyAny>)> {
    let problem = world.problem(&free, goals, None)?;
    let starts = world.starts.as_deref();
    let built = py
        .detach(|| softvi::world::grid_mdp::GridMdp::new(&problem, starts))
        .map_err(to_py)?;
    let states = built.cell_of_state.len();
    let cells = array(py, built.cell_of_state, vec![states])?;
    Ok((PyMdp { inner: built.mdp }, cells))
}

/// Solves a gridworld batch (see `softvi.solve_grid`): `free` `bool [H,W]`, `goals` the goal
/// cells `row * W + col` of each task, `reward` `float32 [B,H,W]` or none.
#[pyfunction]
fn solve_grid<'py>(
    py: Python<'py>,
    free: PyReadonlyArrayDyn<'py, bool>,
    goals: Vec<Vec<usize>>,
    reward: Option<PyReadonlyArrayDyn<'py, f32>>,
    world: GridWorld,
    settings: Settings,
) -> PyResult<Bound<'py, PyDict>> {
    let (options, outputs, device) = (settings.options()?, settings.outputs(), settings.device()?);
    let problem = world.problem(&free, goals, reward.as_ref())?;
    let shape = [problem.grid.height, problem.grid.width];
    let starts = world.starts.as_deref();
    let (solved, label) = solve_detached(py, |progress| {
        problem.validate()?;
        let native = match settings.device.as_str() {
            "native" => true,
            "auto" => software_only(),
            _ => false,
        };
        if native && !outputs.needs_steps() {
            let mut solver = NativeSolver::new(None);
            let label = GridSolver::label(&solver);
            let solved = solver.solve_grid(&problem, starts, &options, outputs, progress)?;
            return Ok((solved, label));
        }
        with_solver(device, |solver| {
            solver
                .as_grid()
                .solve_grid(&problem, starts, &options, outputs, progress)
        })
    })?;
    solution_dict(py, solved, &shape, label)
}

/// Trajectories of every task of `mdp` drawn from `policy` (`float32 [B,S,A]`, stationary,
/// with `policy_steps` 1; `[B,T,S,A]` with `policy_steps` T): states `int32 [B,N,steps+1]`
/// and actions `int32 [B,N,steps]`, -1 after an episode's end (see `softvi.sample`).
#[pyfunction]
fn sample<'py>(
    py: Python<'py>,
    mdp: Py<PyMdp>,
    policy: PyReadonlyArrayDyn<'py, f32>,
    policy_steps: usize,
    episodes: usize,
    steps: usize,
    seed: u64,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let model = &mdp.get().inner;
    let policy: Vec<f32> = policy.as_array().iter().copied().collect();
    let drawn = detached_until(py, |stop| {
        softvi::sample::sample_until(model, &policy, policy_steps, episodes, steps, seed, stop)
    })?;
    let (b, n, t) = (drawn.tasks, drawn.episodes, drawn.steps);
    Ok((
        array(py, drawn.states, vec![b, n, t + 1])?,
        array(py, drawn.actions, vec![b, n, t])?,
    ))
}

/// The posterior over the tasks of `mdp` after each step of one observed trajectory
/// (`states`, with `actions` or without), from `policy` as in [`sample`] and `prior` `[B]`:
/// the posterior and the log joint it normalises, `float32 [K+1,B]` (row 0 the prior), and
/// where the kernel ran (see `softvi.goal_posterior`).
#[pyfunction]
#[pyo3(signature = (mdp, policy, policy_steps, states, actions, prior, *, device, adapter))]
#[allow(clippy::too_many_arguments)]
fn goal_posterior<'py>(
    py: Python<'py>,
    mdp: Py<PyMdp>,
    policy: PyReadonlyArrayDyn<'py, f32>,
    policy_steps: usize,
    states: Vec<usize>,
    actions: Option<Vec<usize>>,
    prior: Vec<f64>,
    device: &str,
    adapter: Option<usize>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, String)> {
    let model = &mdp.get().inner;
    let device = parse_device(device, adapter)?;
    let policy: Vec<f32> = policy.as_array().iter().copied().collect();
    let trajectory: Vec<Observation> = states
        .iter()
        .enumerate()
        .map(|(i, &state)| Observation {
            state,
            label: format!("states[{i}] = {state}"),
            action: actions.as_ref().and_then(|a| a.get(i).copied()),
            line: i + 1,
        })
        .collect();
    let (posterior, joint, label) = py
        .detach(|| {
            let inputs = posterior_inputs(model, &policy, policy_steps, &trajectory, &prior)?;
            // The posterior kernel runs where a solve would: its CPU twin on the reference.
            let (posterior, joint, label) = with_device(device, |picked| match picked {
                Picked::Cpu(label) => {
                    let (posterior, joint) = softvi::engine::cpu::task_posterior(&inputs);
                    Ok((posterior, joint, label))
                }
                Picked::Gpu(gpu) => {
                    let (posterior, joint) = TaskPosterior::new(gpu.context())?.run(&inputs)?;
                    Ok((posterior, joint, MdpSolver::label(gpu)))
                }
            })?;
            check_possible(&inputs, &joint)?;
            Ok((posterior, joint, label))
        })
        .map_err(to_py)?;
    let shape = vec![posterior.len() / model.tasks, model.tasks];
    Ok((
        array(py, posterior, shape.clone())?,
        array(py, joint, shape)?,
        label,
    ))
}

/// MaxEnt IRL (see `softvi.maxent_irl`): learns theta `[M,K]` of the reward `theta . phi(s)`
/// for each of M demo sets from `features` `float32 [S,K]`, demonstrated `states`
/// `int32 [M,N,T+1]` and optional `actions` `int32 [M,N,T]` (-1 after an episode's end).
#[pyfunction]
#[pyo3(signature = (mdp, features, states, actions, settings, *, learning_rate, iters, tol))]
#[allow(clippy::too_many_arguments)]
fn maxent_irl<'py>(
    py: Python<'py>,
    mdp: Py<PyMdp>,
    features: PyReadonlyArrayDyn<'py, f32>,
    states: PyReadonlyArrayDyn<'py, i32>,
    actions: Option<PyReadonlyArrayDyn<'py, i32>>,
    settings: Settings,
    learning_rate: f64,
    iters: u32,
    tol: f64,
) -> PyResult<Bound<'py, PyDict>> {
    let model = &mdp.get().inner;
    let (options, device) = (settings.options()?, settings.device()?);
    let &[sets, episodes, steps_1] = states.shape() else {
        return Err(PyValueError::new_err(format!(
            "states has shape {:?}; expected [M,N,T+1]",
            states.shape()
        )));
    };
    let steps = steps_1.saturating_sub(1);
    if let Some(a) = &actions
        && a.shape() != [sets, episodes, steps]
    {
        return Err(PyValueError::new_err(format!(
            "actions has shape {:?}; expected [M,N,T] = [{sets}, {episodes}, {steps}]",
            a.shape()
        )));
    }
    let demos = Demos {
        sets,
        episodes,
        steps,
        states: states.as_array().iter().copied().collect(),
        actions: actions.map(|a| a.as_array().iter().copied().collect()),
    };
    let features: Vec<f32> = features.as_array().iter().copied().collect();
    let irl_options = IrlOptions {
        solve: options,
        learning_rate,
        iters,
        tol,
    };
    // Ctrl-C stops the learning after the iteration in progress, as it stops a solve.
    let (learned, label) = solve_detached(py, |progress| {
        with_solver(device, |solver| {
            softvi::irl::learn(
                model,
                &features,
                &demos,
                &irl_options,
                solver.as_mdp(),
                &mut |_, _| progress(&Progress::default()),
            )
        })
    })?;
    let k = features.len() / model.states.max(1);
    let out = PyDict::new(py);
    out.set_item("theta", array(py, learned.theta, vec![sets, k])?)?;
    let history = pyo3::types::PyList::empty(py);
    for step in &learned.history {
        let row = PyDict::new(py);
        row.set_item("log_likelihood", step.log_likelihood.clone())?;
        row.set_item("gradient_norm", step.gradient_norm.clone())?;
        row.set_item("solve_seconds", step.solve_seconds)?;
        history.append(row)?;
    }
    out.set_item("history", history)?;
    out.set_item("converged", learned.converged)?;
    out.set_item(
        "demo_features",
        array(py, learned.demo_features, vec![sets, k])?,
    )?;
    out.set_item(
        "model_features",
        array(py, learned.model_features, vec![sets, k])?,
    )?;
    out.set_item("adapter", label)?;
    Ok(out)
}

/// Meta-RL as task inference (see `softvi.meta_rl`): posterior sampling, an oracle and a
/// prior-only agent on every true task of `mdp`, acting with `policy` as in [`sample`].
#[pyfunction]
#[pyo3(signature = (
    mdp, policy, policy_steps, *, episodes, steps, trials, seed, eval_tasks, prior,
    reward_noise, device, adapter
))]
#[allow(clippy::too_many_arguments)]
fn meta_rl<'py>(
    py: Python<'py>,
    mdp: Py<PyMdp>,
    policy: PyReadonlyArrayDyn<'py, f32>,
    policy_steps: usize,
    episodes: usize,
    steps: usize,
    trials: usize,
    seed: u64,
    eval_tasks: Vec<usize>,
    prior: Vec<f64>,
    reward_noise: Option<f64>,
    device: &str,
    adapter: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    use softvi::meta::{MetaOptions, PosteriorDevice};
    let model = &mdp.get().inner;
    let device = parse_device(device, adapter)?;
    let policy: Vec<f32> = policy.as_array().iter().copied().collect();
    let options = MetaOptions {
        episodes,
        steps,
        trials,
        seed,
        eval_tasks,
        prior,
        reward_noise,
    };
    let (report, label) = detached_until(py, |stop| {
        with_device(device, |picked| match picked {
            Picked::Cpu(label) => Ok((
                softvi::meta::meta_rl_until(
                    model,
                    &policy,
                    policy_steps,
                    &options,
                    PosteriorDevice::Cpu,
                    stop,
                )?,
                label,
            )),
            Picked::Gpu(gpu) => {
                let report = softvi::meta::meta_rl_until(
                    model,
                    &policy,
                    policy_steps,
                    &options,
                    PosteriorDevice::Gpu(gpu.context()),
                    stop,
                )?;
                Ok((report, MdpSolver::label(gpu)))
            }
        })
    })?;
    let out = PyDict::new(py);
    for (name, curve) in [
        ("posterior_sampling", &report.posterior_sampling),
        ("oracle", &report.oracle),
        ("prior_only", &report.prior_only),
        ("mass_on_true_task", &report.mass_on_true_task),
    ] {
        let pair = PyDict::new(py);
        pair.set_item("mean", PyArray1::from_slice(py, &curve.mean))?;
        pair.set_item(
            "standard_error",
            PyArray1::from_slice(py, &curve.standard_error),
        )?;
        out.set_item(name, pair)?;
    }
    out.set_item("runs", report.runs)?;
    out.set_item("adapter", label)?;
    Ok(out)
}

/// Soft Q-learning from a dataset (see `softvi.qlearn`): `arrays` holds `s`, `a`, `r`,
/// `s_next` (`[N]` or `[B,N]`, -1 marks padding) and optional `done`, as the CLI's `--data`
/// file; learned on the empirical MDP by the solver `settings` pick.
#[pyfunction]
fn qlearn<'py>(
    py: Python<'py>,
    arrays: HashMap<String, PyReadonlyArrayDyn<'py, f64>>,
    states: usize,
    actions: usize,
    settings: Settings,
) -> PyResult<Bound<'py, PyDict>> {
    let (options, device) = (settings.options()?, settings.device()?);
    let values = npy_values(arrays);
    let data = softvi::qlearn::Dataset::from_arrays(&values, states, actions).map_err(to_py)?;
    let (learned, label) = solve_detached(py, |progress| {
        with_solver(device, |solver| {
            softvi::qlearn::qlearn(solver.as_mdp(), &data, &options, progress)
        })
    })?;
    let (b, s, a) = (learned.datasets, learned.states, learned.actions);
    let out = PyDict::new(py);
    out.set_item("q", array(py, learned.q, vec![b, s, a])?)?;
    out.set_item("values", array(py, learned.values, vec![b, s])?)?;
    out.set_item("policy", array(py, learned.policy, vec![b, s, a])?)?;
    out.set_item("samples", learned.samples)?;
    out.set_item("unseen_pairs", learned.unseen_pairs)?;
    out.set_item("states_without_data", learned.states_without_data)?;
    out.set_item("sweeps", learned.sweeps)?;
    out.set_item("residual", learned.residual)?;
    out.set_item("status", learned.status.name())?;
    out.set_item("seconds", learned.seconds)?;
    out.set_item("adapter", label)?;
    Ok(out)
}

/// Runs the `softvi` command line on `argv` (`argv[0]` is the program name); returns the exit
/// code. Errors are printed as the binary prints them.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    use clap::Parser;
    let parsed = match cli::Cli::try_parse_from(argv) {
        Ok(parsed) => parsed,
        Err(e) => {
            // --help and --version print to stdout and exit 0, usage errors to stderr.
            let _ = e.print();
            return e.exit_code();
        }
    };
    py.detach(|| match cli::run(parsed) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    })
}

#[pymodule]
fn _softvi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("DeviceError", m.py().get_type::<DeviceError>())?;
    m.add_class::<PyMdp>()?;
    m.add_function(wrap_pyfunction!(mdp_from_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(mdp_from_dense_in_place, m)?)?;
    m.add_function(wrap_pyfunction!(load_npz, m)?)?;
    m.add_function(wrap_pyfunction!(maze, m)?)?;
    m.add_function(wrap_pyfunction!(load_movingai, m)?)?;
    m.add_function(wrap_pyfunction!(adapters, m)?)?;
    m.add_function(wrap_pyfunction!(adapter_info, m)?)?;
    m.add_function(wrap_pyfunction!(solve_mdp, m)?)?;
    m.add_function(wrap_pyfunction!(vjp, m)?)?;
    m.add_function(wrap_pyfunction!(grid_as_mdp, m)?)?;
    m.add_function(wrap_pyfunction!(solve_grid, m)?)?;
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(goal_posterior, m)?)?;
    m.add_function(wrap_pyfunction!(maxent_irl, m)?)?;
    m.add_function(wrap_pyfunction!(meta_rl, m)?)?;
    m.add_function(wrap_pyfunction!(qlearn, m)?)?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    Ok(())
}
