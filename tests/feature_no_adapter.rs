//! No usable adapter is `Error::NoAdapter`, so a caller can fall back to the CPU reference.
//! (Its own test binary: it changes the process environment.)

#[test]
fn no_matching_adapter_is_a_no_adapter_error() {
    // SAFETY: no other test of this binary reads the environment.
    unsafe { std::env::set_var("WGPU_ADAPTER_NAME", "no-such-adapter-softvi") };
    match softvi::GpuContext::from_env() {
        Err(softvi::Error::NoAdapter(message)) => {
            assert!(message.contains("no-such-adapter-softvi"), "{message}");
            // The adapters seen are listed with their backends, so two llvmpipe entries
            // (Vulkan and GL) are told apart; without any adapter the list is empty.
            let listed = message.split("found:").nth(1).unwrap_or_default();
            assert!(
                listed.contains("(vulkan)") || listed.contains("(gl)") || listed.contains("[]"),
                "{message}"
            );
        }
        Err(other) => panic!("expected NoAdapter, got {other:?}"),
        Ok(ctx) => panic!("an adapter matched: {}", ctx.adapter_label()),
    }
}

/// A `WGPU_BACKEND` that names no wgpu backend is refused by name (wgpu would ignore the name
/// and find no adapter, which reads as "no GPU"); known names and lists pass.
#[test]
fn an_unknown_backend_name_is_named() {
    use softvi::engine::gpu::context::backends_from_list;
    match backends_from_list("nonsense") {
        Err(softvi::Error::NoAdapter(message)) => {
            assert!(
                message.contains("WGPU_BACKEND") && message.contains("\"nonsense\""),
                "{message}"
            )
        }
        other => panic!("expected NoAdapter, got {other:?}"),
    }
    assert!(backends_from_list("vulkan, nonsense").is_err());
    assert_eq!(
        backends_from_list("Vulkan,gl").unwrap(),
        wgpu::Backends::VULKAN | wgpu::Backends::GL
    );
}
