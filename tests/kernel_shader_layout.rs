//! Every WGSL file parses and validates with naga, and the uniform structs and constants
//! shared with Rust have the same sizes and values on both sides.

use softvi::engine::gpu::core::{NOT_CONVERGED, RESIDUAL_REDUCE_WGSL, ReduceParams};
use softvi::engine::gpu::grid_engine::{GRID_BACKUP_WGSL, GridParams, WORKGROUP_SIZE};

fn module(source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(source)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{e:?}"));
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

#[test]
fn grid_backup_layout_matches_rust() {
    let (m, _) = module(GRID_BACKUP_WGSL);
    assert_eq!(
        struct_size(&m, "GridParams") as usize,
        size_of::<GridParams>()
    );
    assert_eq!(
        constant(&m, "WORKGROUP_SIZE"),
        naga::Literal::U32(WORKGROUP_SIZE)
    );
    assert_eq!(
        constant(&m, "TIE_RELATIVE"),
        naga::Literal::F32(softvi::engine::cpu::TIE_RELATIVE as f32)
    );
    for entry in ["grid_backup", "grid_policy"] {
        assert!(m.entry_points.iter().any(|e| e.name == entry), "{entry}");
    }
}

#[test]
fn residual_reduce_layout_matches_rust() {
    let (m, _) = module(RESIDUAL_REDUCE_WGSL);
    assert_eq!(
        struct_size(&m, "ReduceParams") as usize,
        size_of::<ReduceParams>()
    );
    assert_eq!(
        struct_size(&m, "Control") as u64,
        softvi::engine::gpu::core::CONTROL_HEADER_BYTES + 4
    );
    assert_eq!(
        constant(&m, "WORKGROUP_SIZE"),
        naga::Literal::U32(softvi::engine::gpu::core::WORKGROUP_SIZE)
    );
    assert_eq!(
        constant(&m, "NOT_CONVERGED"),
        naga::Literal::U32(NOT_CONVERGED)
    );
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
fn mdp_kernels_layout_matches_rust() {
    use softvi::engine::gpu::mdp_engine::{
        MDP_BACKUP_WGSL, MDP_OCCUPANCY_WGSL, MdpParams, OccupancyParams, WORKGROUP_SIZE,
    };
    let (m, _) = module(MDP_BACKUP_WGSL);
    assert_eq!(
        struct_size(&m, "MdpParams") as usize,
        size_of::<MdpParams>()
    );
    assert_eq!(
        constant(&m, "WORKGROUP_SIZE"),
        naga::Literal::U32(WORKGROUP_SIZE)
    );
    assert_eq!(
        constant(&m, "TIE_RELATIVE"),
        naga::Literal::F32(softvi::engine::cpu::TIE_RELATIVE as f32)
    );
    for entry in ["mdp_backup", "mdp_policy"] {
        assert!(m.entry_points.iter().any(|e| e.name == entry), "{entry}");
    }
    let (m, _) = module(MDP_OCCUPANCY_WGSL);
    assert_eq!(
        struct_size(&m, "OccupancyParams") as usize,
        size_of::<OccupancyParams>()
    );
    assert_eq!(
        constant(&m, "WORKGROUP_SIZE"),
        naga::Literal::U32(WORKGROUP_SIZE)
    );
    for entry in ["mdp_occupancy", "mdp_occupancy_weights"] {
        assert!(m.entry_points.iter().any(|e| e.name == entry), "{entry}");
    }
}

#[test]
fn extrapolate_layout_matches_rust() {
    use softvi::engine::gpu::core::{EXTRAPOLATE_WGSL, ExtrapolateParams};
    let (m, _) = module(EXTRAPOLATE_WGSL);
    assert_eq!(
        struct_size(&m, "ExtrapolateParams") as usize,
        size_of::<ExtrapolateParams>()
    );
    assert!(m.entry_points.iter().any(|e| e.name == "extrapolate"));
}
