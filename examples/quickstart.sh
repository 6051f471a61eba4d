#!/usr/bin/env bash
# The front page's quick start with the installed command: a generated 127 x 127 maze solved
# for four goal tasks (one per corner), then task 1 drawn with six trajectories sampled from
# its soft-optimal policy. Run from the repository root with `softvi` on PATH
# (`pip install ./python`, or target/release after `cargo build --release`):
# `bash examples/quickstart.sh`. Writes quickstart/ (values.npy, policy.npy, summary.json,
# task1.png); prints the solve's summary (the f32 precision-floor warning goes to stderr).
set -euo pipefail
softvi solve --maze 127x127 --goal 1,1 --goal 125,125 --goal 1,125 --goal 125,1 --alpha 0.1 \
    --gamma 0.999 --slip 0.1 --out quickstart --force --quiet
softvi render --from quickstart --task 1 --trajectories 6 --seed 7 --out quickstart/task1.png
