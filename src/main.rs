use clap::Parser;

mod cli;

fn main() {
    quiet_headless_vulkan();
    // A malformed command line is bad input like any other: exit 1, not clap's 2 (help and
    // --version still print and exit 0).
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    match cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Turns off Mesa's Vulkan device-selection layer (`VK_LAYER_MESA_device_select`, an implicit
/// layer the Vulkan loader puts into every instance) by its documented switch
/// `NODEVICE_SELECT=1`, unless the user configured it (`NODEVICE_SELECT` or
/// `MESA_VK_DEVICE_SELECT` set). The layer only reorders adapters towards the one driving the
/// display, probing Wayland and X11 for it, and on a headless machine libwayland prints
/// `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` four times, which reads
/// like softvi's own error. softvi presents nothing and orders adapters itself
/// (`GpuContext::adapters`); wgpu 30 has no instance option that skips implicit layers or
/// window-system extensions, so the variable it is.
fn quiet_headless_vulkan() {
    if std::env::var_os("NODEVICE_SELECT").is_none()
        && std::env::var_os("MESA_VK_DEVICE_SELECT").is_none()
    {
        // SAFETY: the first statement of main, before any thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}
