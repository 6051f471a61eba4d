//! No usable adapter is `Error::NoAdapter`, so a caller can fall back to the CPU reference.
//! (Its own test binary: it changes the process environment.)

#[test]
fn no_matching_adapter_is_a_no_adapter_error() {
    // SAFETY: the only test in this binary, so no other thread reads the environment.
    unsafe { std::env::set_var("WGPU_ADAPTER_NAME", "no-such-adapter-softvi") };
    match softvi::GpuContext::from_env() {
        Err(softvi::Error::NoAdapter(message)) => {
            assert!(message.contains("no-such-adapter-softvi"), "{message}")
        }
        Err(other) => panic!("expected NoAdapter, got {other:?}"),
        Ok(ctx) => panic!("an adapter matched: {}", ctx.adapter_label()),
    }
}
