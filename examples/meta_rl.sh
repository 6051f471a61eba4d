#!/usr/bin/env bash
# Meta-RL as task inference: the adaptation curve of posterior sampling on a sparse-goal world.
# Run from the repository root with `softvi` on PATH (`pip install ./python`, or
# target/release after `cargo build --release`): `bash examples/meta_rl.sh`.
# Seven goals on a half ring around the start, reward 1 only at the (unknown) goal; each
# episode the agent samples a goal from its posterior over its own experience. Writes
# meta/meta.json and meta/returns.png, then prints the mean return per episode of posterior
# sampling, the oracle and the prior-only agent, and the posterior mass on the true goal.
set -euo pipefail
softvi meta --map tests/data/half_ring.map --goals tests/data/half_ring_goals.txt --start 7,8 \
    --move-cost 0,0 --goal-value 1 --alpha 0.01 --gamma 0.9 --steps 15 --episodes 10 \
    --trials 30 --out meta --force >/dev/null
python - <<'PY'
import json

meta = json.load(open("meta/meta.json"))
print(f"{'episode':<18} " + " ".join(f"{k:>4}" for k in range(1, meta["episodes"] + 1)))
for agent in ("posterior_sampling", "oracle", "prior_only", "posterior_mass_on_true_task"):
    name = {"posterior_mass_on_true_task": "p(z*)"}.get(agent, agent.replace("_", " "))
    print(f"{name:<18} " + " ".join(f"{m:4.2f}" for m in meta[agent]["mean"]))
PY
