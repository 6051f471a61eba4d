//! `softvi adapters`: the wgpu adapters this machine offers.

use anyhow::{Result, bail};

use softvi::engine::gpu::GpuContext;

/// `softvi adapters`.
pub(super) fn adapters_command() -> Result<i32> {
    let adapters = GpuContext::adapters_from_env()?;
    if adapters.is_empty() {
        bail!(softvi::engine::gpu::context::NO_ADAPTER_HELP);
    }
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let limits = a.limits();
        println!(
            "{i}: {} ({}), {:?}, max storage binding {} MiB, max buffer {} MiB, {} storage buffers per stage",
            info.name,
            info.backend,
            info.device_type,
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_buffer_size >> 20,
            limits.max_storage_buffers_per_shader_stage
        );
    }
    Ok(0)
}
