//! Helpers of the `softvi` binary tests (tests/cli_*.rs): run the binary, read what it wrote.

use std::path::Path;
use std::process::{Command, Output};

pub fn softvi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_softvi"))
        .args(args)
        .output()
        .expect("run softvi")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

pub fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// Whether an adapter exists; without one (and without SOFTVI_REQUIRE_GPU=1, under which the
/// test fails instead) the caller skips, loudly.
pub fn gpu_available() -> bool {
    match softvi::GpuContext::from_env() {
        Ok(_) => true,
        Err(e) if std::env::var("SOFTVI_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("SOFTVI_REQUIRE_GPU=1 but no adapter: {e:#}")
        }
        Err(_) => {
            eprintln!("\n*** SKIPPING GPU CLI TEST: no adapter ***\n");
            false
        }
    }
}

pub const SMALL_MAP: &str = "type octile\nheight 4\nwidth 5\nmap\n.....\n.@@..\n.....\n@....\n";
