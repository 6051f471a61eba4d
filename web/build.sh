#!/usr/bin/env bash
# Builds the playground's wasm module into web/pkg/ (git-ignored): the softvi-web crate for
# wasm32-unknown-unknown (wgpu's WebGPU backend), then wasm-bindgen's ES module for the page.
# Serve it with:  python3 -m http.server -d web 8000   (then open http://localhost:8000/)
# Needs: rustup target add wasm32-unknown-unknown; cargo install wasm-bindgen-cli --version
# equal to the wasm-bindgen crate's (checked below).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
want="$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' web/Cargo.toml)"
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" || true
if [ "$have" != "$want" ]; then
    echo "web/build.sh: wasm-bindgen-cli is '${have:-missing}', the crate is $want:" >&2
    echo "  cargo install wasm-bindgen-cli --version $want" >&2
    exit 1
fi
cargo build -p softvi-web --release --target wasm32-unknown-unknown
rm -rf web/pkg
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
    target/wasm32-unknown-unknown/release/softvi_web.wasm
# A few small MovingAI maps the page offers (the tests' copies; see tests/data/maps/README.md).
mkdir -p web/pkg/maps
cp tests/data/maps/den312d.map tests/data/maps/Berlin_1_256.map web/pkg/maps/
echo "web/pkg/softvi_web_bg.wasm: $(stat -c %s web/pkg/softvi_web_bg.wasm) bytes"
