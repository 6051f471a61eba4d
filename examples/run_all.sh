#!/usr/bin/env bash
# Runs every example of examples/README.md in order and checks that each prints the lines
# shown there (its `output` blocks): the runnable blocks of that page, run by
# .ci/doc_blocks.py in target/doc-blocks/examples-readme/. Uses `python3` (or $PYTHON), which
# must import softvi (and gymnasium, seals for frozenlake.py), and target/release/softvi when
# it is built, else the `softvi` command on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" .ci/doc_blocks.py examples/README.md
