#!/usr/bin/env bash
# Builds the Dioxus web app (web/) into target/web-dist, which the `web`
# component serves: a release build for wasm32-unknown-unknown, then
# wasm-bindgen (the CLI of the exact version in Cargo.lock, installed once
# into the tools cache, a few minutes the first time), then the static files.
# It is the `web` component's build command in spin.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=${CACHE_DIR:-$HOME/.cache/llm-billing}/tools
OUT=target/web-dist
say() { printf '==> %s\n' "$*" >&2; }

rustup target list --installed | grep -qx wasm32-unknown-unknown || { say "adding the wasm32-unknown-unknown Rust target"; rustup target add wasm32-unknown-unknown; }
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
if [ "$("$TOOLS/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
    say "installing wasm-bindgen-cli $version into $TOOLS (once; a few minutes on 2 cores)"
    cargo install -q wasm-bindgen-cli --version "$version" --root "$TOOLS"
fi
cargo build -q --release --target wasm32-unknown-unknown -p billing-web
mkdir -p "$OUT"
"$TOOLS/bin/wasm-bindgen" --target web --no-typescript --out-dir "$OUT" --out-name billing_web target/wasm32-unknown-unknown/release/billing-web.wasm
cp web/static/* "$OUT/"
