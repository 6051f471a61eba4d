//! `softvi bench`: bad flags are refused by name before any workload is built.

mod common;

use common::cli::*;

/// An unknown workload, a map workload whose maps folder lacks the map, and a sweep count
/// the timing would overflow: each exits 1 with a message naming the flag and the value.
#[test]
fn bad_bench_flags_name_the_problem() {
    for (args, expected) in [
        (
            vec!["--workload", "nope"],
            "--workload \"nope\" is unknown (known: maze1024-b1",
        ),
        (
            vec![
                "--workload",
                "orz900d-b64",
                "--maps",
                "/nonexistent-softvi-maps",
            ],
            "orz900d.map, which is not in the maps folder /nonexistent-softvi-maps (--maps)",
        ),
        (
            vec!["--workload", "maze1024-b1", "--sweeps", "4294967295"],
            "--sweeps must be in 1..=16384",
        ),
    ] {
        let o = softvi(&[&["bench"][..], &args].concat());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
