//! Every shader module, composed exactly as the engines build it (the `*_WGSL` constants: the
//! shared pieces of `shaders/shared/` joined in front of a kernel file), parses and validates
//! with naga and translates to SPIR-V, MSL, HLSL and GLSL, entry point by entry point, under
//! every set of override constants the engines pass. Every file under `shaders/` belongs to
//! some module, and the uniform structs and constants shared with Rust have the same sizes and
//! values on both sides.

use std::collections::BTreeSet;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use softvi::engine::gpu::core::{
    CONTROL_HEADER_BYTES, EXTRAPOLATE_WGSL, ExtrapolateParams, NOT_CONVERGED, NOT_FROZEN,
    RESIDUAL_REDUCE_WGSL, ReduceParams,
};
use softvi::engine::gpu::grid_engine::{GRID_BACKUP_WGSL, GRID_OCCUPANCY_WGSL, GridParams};
use softvi::engine::gpu::grid_vjp::{GRID_VJP_WGSL, GridVjpParams};
use softvi::engine::gpu::mdp_engine::{
    DENSE_SUM_LOW, DenseParams, MAX_TASK_TILE, MDP_BACKUP_WGSL, MDP_DENSE_BACKUP_WGSL,
    MDP_DENSE_WGSL, MDP_OCCUPANCY_WGSL, MDP_VJP_WGSL, MdpParams, OccupancyParams,
};
use softvi::engine::gpu::mdp_vjp::VjpParams;
use softvi::engine::gpu::task_posterior::{PosteriorParams, TASK_POSTERIOR_WGSL};

const BOOL: &[f64] = &[0.0, 1.0];

/// One shader module as an engine builds it: its entry points and, for each `override`, the
/// values the engine may pass (see `GridEngine::grid_pipeline` and `MdpEngine::pipeline`).
struct Shader {
    name: &'static str,
    source: &'static str,
    entry_points: &'static [&'static str],
    overrides: &'static [(&'static str, &'static [f64])],
}

const SHADERS: &[Shader] = &[
    Shader {
        name: "grid_backup",
        source: GRID_BACKUP_WGSL,
        entry_points: &["grid_backup", "grid_policy", "evaluate"],
        overrides: &[
            ("CONNECTIVITY", &[4.0, 8.0]),
            ("STAY", BOOL),
            ("OPTIMISTIC", BOOL),
            ("HAS_REWARD", BOOL),
            ("HARD_MAX", BOOL),
            ("WRITE_RESIDUAL", BOOL),
            ("WRITE_Q", BOOL),
            ("FREEZE", BOOL),
            ("IMPROVE", BOOL),
        ],
    },
    Shader {
        name: "grid_occupancy",
        source: GRID_OCCUPANCY_WGSL,
        entry_points: &["grid_occupancy"],
        overrides: &[
            ("CONNECTIVITY", &[4.0, 8.0]),
            ("STAY", BOOL),
            ("ADD_START", BOOL),
            ("WEIGHTED", BOOL),
            ("WRITE_RESIDUAL", BOOL),
        ],
    },
    Shader {
        name: "grid_vjp",
        source: GRID_VJP_WGSL,
        entry_points: &["grid_vjp_rows", "grid_vjp_pull", "grid_vjp_products"],
        overrides: &[
            ("CONNECTIVITY", &[4.0, 8.0]),
            ("STAY", BOOL),
            ("OPTIMISTIC", BOOL),
            ("HARD_MAX", BOOL),
            ("WRITE_WEIGHTS", BOOL),
        ],
    },
    Shader {
        name: "mdp_backup",
        source: MDP_BACKUP_WGSL,
        entry_points: &["mdp_backup", "mdp_policy", "improve", "evaluate"],
        overrides: &[
            ("OPTIMISTIC", BOOL),
            ("HARD_MAX", BOOL),
            ("WRITE_RESIDUAL", BOOL),
            ("WRITE_Q", BOOL),
            ("FREEZE", BOOL),
        ],
    },
    Shader {
        name: "mdp_dense_backup",
        source: MDP_DENSE_BACKUP_WGSL,
        entry_points: &["mdp_backup", "mdp_policy", "improve", "evaluate"],
        overrides: &[
            ("OPTIMISTIC", BOOL),
            ("HARD_MAX", BOOL),
            ("WRITE_RESIDUAL", BOOL),
            ("WRITE_Q", BOOL),
            ("FREEZE", BOOL),
        ],
    },
    Shader {
        name: "mdp_dense",
        source: MDP_DENSE_WGSL,
        entry_points: &["mdp_dense_shift", "mdp_dense_product"],
        overrides: &[
            // Any tile from 1 to MAX_TASK_TILE (the batch's, up to 8).
            ("TASK_TILE", &[1.0, 2.0, 3.0, 5.0, 8.0]),
            ("FREEZE", BOOL),
        ],
    },
    Shader {
        name: "mdp_occupancy",
        source: MDP_OCCUPANCY_WGSL,
        entry_points: &["mdp_occupancy", "mdp_occupancy_weights"],
        overrides: &[
            ("ADD_START", BOOL),
            ("WRITE_RESIDUAL", BOOL),
            // Any action count; these cover 1, a power of two and odd ones.
            ("ACTIONS", &[1.0, 4.0, 5.0, 8.0, 9.0, 17.0]),
            ("WEIGHTED", BOOL),
        ],
    },
    Shader {
        name: "mdp_vjp",
        source: MDP_VJP_WGSL,
        entry_points: &["mdp_vjp_rows", "mdp_vjp_pull", "mdp_vjp_products"],
        overrides: &[
            ("OPTIMISTIC", BOOL),
            ("HARD_MAX", BOOL),
            ("WRITE_WEIGHTS", BOOL),
        ],
    },
    Shader {
        name: "residual_reduce",
        source: RESIDUAL_REDUCE_WGSL,
        entry_points: &["residual_reduce", "convergence_decide"],
        overrides: &[],
    },
    Shader {
        name: "extrapolate",
        source: EXTRAPOLATE_WGSL,
        entry_points: &["extrapolate"],
        overrides: &[],
    },
    Shader {
        name: "task_posterior",
        source: TASK_POSTERIOR_WGSL,
        entry_points: &["step_likelihood", "accumulate", "normalize", "observe"],
        overrides: &[],
    },
];

fn shader(name: &str) -> &'static Shader {
    SHADERS.iter().find(|s| s.name == name).unwrap()
}

fn validate(module: &naga::Module) -> Result<ModuleInfo, String> {
    Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(module)
        .map_err(|e| format!("{e:?}"))
}

fn module(source: &str) -> (naga::Module, ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
    let info = validate(&module).unwrap_or_else(|e| panic!("{e}"));
    (module, info)
}

fn struct_size(module: &naga::Module, name: &str) -> u32 {
    let (_, ty) = module
        .types
        .iter()
        .find(|(_, t)| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no struct {name}"));
    match ty.inner {
        naga::TypeInner::Struct { span, .. } => span,
        _ => panic!("{name} is not a struct"),
    }
}

fn constant(module: &naga::Module, name: &str) -> naga::Literal {
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no const {name}"));
    match module.global_expressions[c.init] {
        naga::Expression::Literal(l) => l,
        ref e => panic!("{name} is not a literal: {e:?}"),
    }
}

/// Every combination of the listed override values.
fn combinations(overrides: &[(&str, &[f64])]) -> Vec<naga::back::PipelineConstants> {
    let mut all = vec![naga::back::PipelineConstants::default()];
    for &(name, values) in overrides {
        all = all
            .into_iter()
            .flat_map(|c| {
                values.iter().map(move |&v| {
                    let mut c = c.clone();
                    c.insert(name.to_string(), v);
                    c
                })
            })
            .collect();
    }
    all
}

/// Translates compute entry point `entry` of `module` (overrides resolved) with each backend
/// wgpu uses, at the lowest language versions wgpu supports.
fn translate(module: &naga::Module, info: &ModuleInfo, entry: &str) -> Result<(), String> {
    let stage = naga::ShaderStage::Compute;
    let words = spv::write_vec(
        module,
        info,
        &spv::Options::default(),
        Some(&spv::PipelineOptions {
            shader_stage: stage,
            entry_point: entry.to_string(),
        }),
    )
    .map_err(|e| format!("SPIR-V: {e}"))?;
    let (metal, _) = msl::write_string(
        module,
        info,
        &msl::Options {
            lang_version: (2, 0),
            ..Default::default()
        },
        &msl::PipelineOptions {
            entry_point: Some((stage, entry.to_string())),
            ..Default::default()
        },
    )
    .map_err(|e| format!("MSL: {e}"))?;
    let mut hlsl_out = String::new();
    hlsl::Writer::new(
        &mut hlsl_out,
        &hlsl::Options::default(),
        &hlsl::PipelineOptions {
            entry_point: Some((stage, entry.to_string())),
        },
    )
    .write(module, info, None)
    .map_err(|e| format!("HLSL: {e}"))?;
    let mut glsl_out = String::new();
    glsl::Writer::new(
        &mut glsl_out,
        module,
        info,
        &glsl::Options::default(),
        &glsl::PipelineOptions {
            shader_stage: stage,
            entry_point: entry.to_string(),
            multiview: None,
        },
        naga::proc::BoundsCheckPolicies::default(),
    )
    .and_then(|mut w| w.write())
    .map_err(|e| format!("GLSL: {e}"))?;
    // Each output holds the kernel: SPIR-V's magic number, the entry point's name in MSL and
    // HLSL, GLSL's main.
    let ok = words.first() == Some(&0x0723_0203)
        && metal.contains(entry)
        && hlsl_out.contains(entry)
        && glsl_out.contains("void main(");
    if ok {
        Ok(())
    } else {
        Err("an empty translation".into())
    }
}

#[test]
fn every_module_translates_for_every_entry_point_and_override() {
    for shader in SHADERS {
        let (module, info) = module(shader.source);
        let entries: BTreeSet<&str> = module.entry_points.iter().map(|e| &*e.name).collect();
        let expected: BTreeSet<&str> = shader.entry_points.iter().copied().collect();
        assert_eq!(entries, expected, "{}: entry points", shader.name);
        let overrides: BTreeSet<&str> = module
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.as_deref())
            .collect();
        let listed: BTreeSet<&str> = shader.overrides.iter().map(|&(n, _)| n).collect();
        assert_eq!(overrides, listed, "{}: overrides", shader.name);
        let mut translated = 0;
        for constants in combinations(shader.overrides) {
            for &entry in shader.entry_points {
                let what = format!("{} {entry} {constants:?}", shader.name);
                let (resolved, resolved_info) = naga::back::pipeline_constants::process_overrides(
                    &module,
                    &info,
                    Some((naga::ShaderStage::Compute, entry)),
                    &constants,
                )
                .unwrap_or_else(|e| panic!("{what}: {e}"));
                translate(&resolved, &resolved_info, entry)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                translated += 1;
            }
        }
        eprintln!("{}: {translated} translations per backend", shader.name);
        assert!(translated >= shader.entry_points.len());
    }
}

/// The files of `dir` (relative to the crate) with extension `wgsl`, sorted.
fn wgsl_files(dir: &str) -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Every kernel file and every shared piece is part of some module the engines build, so the
/// test above covers it; each shared piece is valid WGSL on its own or after
/// shared/constants.wgsl (which residual_stats.wgsl needs).
#[test]
fn every_wgsl_file_is_in_a_module() {
    let kernels = wgsl_files("shaders");
    let shared = wgsl_files("shaders/shared");
    assert!(kernels.len() >= 7 && shared.len() >= 5);
    for (name, text) in kernels.iter().chain(&shared) {
        assert!(
            SHADERS.iter().any(|s| s.source.contains(text.as_str())),
            "{name} is in no *_WGSL module"
        );
    }
    let constants = &shared
        .iter()
        .find(|(n, _)| n == "constants.wgsl")
        .unwrap()
        .1;
    for (name, text) in &shared {
        let alone = naga::front::wgsl::parse_str(text)
            .map_err(|e| e.emit_to_string(text))
            .and_then(|m| validate(&m));
        if alone.is_err() {
            let joined = format!("{constants}\n{text}");
            let m = naga::front::wgsl::parse_str(&joined)
                .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&joined)));
            validate(&m).unwrap_or_else(|e| panic!("{name} after constants.wgsl: {e}"));
        }
    }
}

#[test]
fn workgroup_sizes_match_rust() {
    use softvi::engine::gpu::{core, grid_engine, mdp_engine, task_posterior as posterior};
    for shader in SHADERS {
        let (m, _) = module(shader.source);
        assert_eq!(
            constant(&m, "WORKGROUP_SIZE"),
            naga::Literal::U32(core::WORKGROUP_SIZE),
            "{}",
            shader.name
        );
    }
    // The engines dispatch with their own constants; `extrapolate` and `residual_reduce`
    // rely on them being the sweeps' workgroup size.
    assert_eq!(grid_engine::WORKGROUP_SIZE, core::WORKGROUP_SIZE);
    assert_eq!(mdp_engine::WORKGROUP_SIZE, core::WORKGROUP_SIZE);
    assert_eq!(posterior::WORKGROUP_SIZE, core::WORKGROUP_SIZE);
}

#[test]
fn grid_layouts_match_rust() {
    for name in ["grid_backup", "grid_occupancy"] {
        let (m, _) = module(shader(name).source);
        assert_eq!(
            struct_size(&m, "GridParams") as usize,
            size_of::<GridParams>(),
            "{name}"
        );
    }
    let (m, _) = module(GRID_VJP_WGSL);
    assert_eq!(
        struct_size(&m, "GridVjpParams") as usize,
        size_of::<GridVjpParams>()
    );
    let (m, _) = module(GRID_BACKUP_WGSL);
    assert_eq!(
        constant(&m, "TIE_RELATIVE"),
        naga::Literal::F32(softvi::engine::cpu::TIE_RELATIVE as f32)
    );
}

#[test]
fn mdp_layouts_match_rust() {
    let (m, _) = module(MDP_BACKUP_WGSL);
    assert_eq!(
        struct_size(&m, "MdpParams") as usize,
        size_of::<MdpParams>()
    );
    assert_eq!(
        constant(&m, "TIE_RELATIVE"),
        naga::Literal::F32(softvi::engine::cpu::TIE_RELATIVE as f32)
    );
    let (m, _) = module(MDP_DENSE_BACKUP_WGSL);
    assert_eq!(
        struct_size(&m, "MdpParams") as usize,
        size_of::<MdpParams>()
    );
    assert_eq!(constant(&m, "SUM_LOW"), naga::Literal::F32(DENSE_SUM_LOW));
    let (m, _) = module(MDP_DENSE_WGSL);
    assert_eq!(
        struct_size(&m, "DenseParams") as usize,
        size_of::<DenseParams>()
    );
    assert_eq!(
        constant(&m, "MAX_TASK_TILE"),
        naga::Literal::U32(MAX_TASK_TILE)
    );
    let (m, _) = module(MDP_OCCUPANCY_WGSL);
    assert_eq!(
        struct_size(&m, "OccupancyParams") as usize,
        size_of::<OccupancyParams>()
    );
    let (m, _) = module(MDP_VJP_WGSL);
    assert_eq!(
        struct_size(&m, "VjpParams") as usize,
        size_of::<VjpParams>()
    );
}

#[test]
fn residual_reduce_layout_matches_rust() {
    let (m, _) = module(RESIDUAL_REDUCE_WGSL);
    assert_eq!(
        struct_size(&m, "ReduceParams") as usize,
        size_of::<ReduceParams>()
    );
    assert_eq!(struct_size(&m, "Control") as u64, CONTROL_HEADER_BYTES + 4);
    assert_eq!(
        constant(&m, "NOT_CONVERGED"),
        naga::Literal::U32(NOT_CONVERGED)
    );
    assert_eq!(constant(&m, "NOT_FROZEN"), naga::Literal::U32(NOT_FROZEN));
    assert_eq!(
        constant(&m, "RESIDUAL_FLOOR"),
        naga::Literal::F32(softvi::engine::schedule::RESIDUAL_FLOOR as f32)
    );
    use softvi::engine::schedule::{CHECK_INTERVAL, JumpState, RATE_AGREEMENT, ROLLBACK};
    assert_eq!(
        constant(&m, "CHECK_INTERVAL"),
        naga::Literal::F32(CHECK_INTERVAL as f32)
    );
    assert_eq!(
        constant(&m, "RATE_AGREEMENT"),
        naga::Literal::F32(RATE_AGREEMENT as f32)
    );
    assert_eq!(
        constant(&m, "ROLLBACK"),
        naga::Literal::F32(ROLLBACK as f32)
    );
    for (name, state) in [
        ("JUMP_ALLOWED", JumpState::Allowed),
        ("JUMP_PENDING", JumpState::Pending),
        ("JUMP_DISABLED", JumpState::Disabled),
    ] {
        assert_eq!(
            constant(&m, name),
            naga::Literal::F32(state as u8 as f32),
            "{name}"
        );
    }
}

#[test]
fn extrapolate_layout_matches_rust() {
    let (m, _) = module(EXTRAPOLATE_WGSL);
    assert_eq!(
        struct_size(&m, "ExtrapolateParams") as usize,
        size_of::<ExtrapolateParams>()
    );
}

#[test]
fn task_posterior_layout_matches_rust() {
    let (m, _) = module(TASK_POSTERIOR_WGSL);
    assert_eq!(
        struct_size(&m, "PosteriorParams") as usize,
        size_of::<PosteriorParams>()
    );
    assert_eq!(
        constant(&m, "IMPOSSIBLE"),
        naga::Literal::F32(softvi::infer::IMPOSSIBLE)
    );
    assert_eq!(
        struct_size(&m, "ObservedStep") as usize,
        size_of::<softvi::engine::layout::ObservedStep>()
    );
    assert_eq!(
        constant(&m, "NOT_TERMINAL"),
        naga::Literal::F32(softvi::engine::layout::NOT_TERMINAL)
    );
    assert_eq!(
        constant(&m, "REWARD_TOLERANCE"),
        naga::Literal::F32(softvi::engine::layout::REWARD_TOLERANCE)
    );
    assert_eq!(
        constant(&m, "NO_STEP"),
        naga::Literal::U32(softvi::engine::layout::NO_STEP)
    );
}
