#!/usr/bin/env bash
# Goal inference from a walk: which of four corner goals is an agent walking to?
# Run from the repository root with `softvi` on PATH (`pip install ./python`, or
# target/release after `cargo build --release`): `bash examples/goal_inference.sh`.
# The walk: 20 cells from the centre of a 31 x 31 maze, sampled from the policy of the goal at
# the bottom-right corner. Prints the CLI's verdict, then the posterior after each step.
set -euo pipefail
printf '%s\n' "15 15" "16 15" "17 15" "17 16" "17 17" "17 18" "17 19" "17 20" "17 21" "17 22" \
    "17 23" "17 24" "17 25" "17 26" "17 27" "17 28" "17 29" "18 29" "19 29" "20 29" > walk.txt
softvi infer --maze 31x31 --goal 1,1 --goal 29,29 --goal 1,29 --goal 29,1 --connectivity 4 \
    --alpha 0.1 --trajectory walk.txt --out post --force
python - <<'PY'
import numpy as np

posterior = np.load("post/posterior.npy")  # [K+1, B]: row 0 the prior, row k after k steps
print("goal X,Y" + "".join(f"  {g:>5}" for g in ("1,1", "29,29", "1,29", "29,1")))
for k in (0, 4, 5, 14, 15, 19):
    print(f"step {k:>3}" + "".join(f"  {p:.3f}" for p in posterior[k]))
PY
