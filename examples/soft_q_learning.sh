#!/usr/bin/env bash
# Soft Q-learning from a fixed dataset, against the true soft Q of the world.
# Run from the repository root with `softvi` on PATH (`pip install ./python`, or
# target/release after `cargo build --release`): `bash examples/soft_q_learning.sh`.
# A uniformly random behaviour policy walks a slippery 15 x 15 maze (2000 episodes of 50
# steps); `softvi qlearn` fits the soft Q-function to those transitions; `softvi solve --q`
# on the f64 CPU reference gives the true one. Prints how many pairs the data saw and the error over them.
set -euo pipefail
softvi sample --maze 15x15 --goal 1,1 --slip 0.2 --behaviour uniform --episodes 2000 --steps 50 \
    --out samples --force --quiet
softvi qlearn --data samples/dataset.npz --maze 15x15 --alpha 1 --gamma 0.95 --out learned \
    --force --quiet
softvi solve --maze 15x15 --goal 1,1 --slip 0.2 --alpha 1 --gamma 0.95 --q --backend cpu --out truth \
    --force --quiet >/dev/null
python - <<'PY'
import numpy as np

learned = np.load("learned/q.npy")[0]  # [H, W, A]; NaN on pairs the data never shows
truth = np.load("truth/q.npy")[0]      # [H, W, A]; NaN on walls and the goal
both = np.isfinite(learned) & np.isfinite(truth)
error = np.abs(learned - truth)[both]
print(f"pairs seen {both.sum()} of {np.isfinite(truth).sum()}")
print(f"mean |Q_learned - Q_true| {error.mean():.4f}, max {error.max():.2f}")
PY
