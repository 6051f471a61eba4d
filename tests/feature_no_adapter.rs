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

/// A `WGPU_BACKEND` that names no wgpu backend is refused by name as bad input (wgpu would
/// ignore the name and find no adapter, which reads as "no GPU"; as a NoAdapter error it let
/// `--backend auto` fall back to the CPU silently); known names and lists pass.
#[test]
fn an_unknown_backend_name_is_named() {
    use softvi::engine::gpu::context::backends_from_list;
    match backends_from_list("nonsense") {
        Err(softvi::Error::InvalidInput(message)) => {
            assert!(
                message.contains("WGPU_BACKEND") && message.contains("\"nonsense\""),
                "{message}"
            )
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args([
            "solve",
            "--maze",
            "9x9",
            "--goal",
            "1,1",
            "--backend",
            "auto",
            "--out",
        ])
        .arg(&out)
        .env("WGPU_BACKEND", "nonsense")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("WGPU_BACKEND=\"nonsense\""), "{err}");
    assert!(!out.exists());
    assert!(backends_from_list("vulkan, nonsense").is_err());
    assert_eq!(
        backends_from_list("Vulkan,gl").unwrap(),
        wgpu::Backends::VULKAN | wgpu::Backends::GL
    );
}
