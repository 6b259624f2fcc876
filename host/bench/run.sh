#!/usr/bin/env bash
# Benchmark: billing-host against `wasmtime serve` (wasmtime-cli 48.0.8) on
# the same hello component, same machine, same run. wrk drives each at
# concurrency 1 and 64 and reports requests/s and p50/p99 latency.
#
#   host/bench/run.sh [seconds-per-run]     (default 10)
#
# Installs wrk (Debian) and wasmtime-cli (crates.io, into ~/.cache/llm-billing/tools)
# when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10}
TOOLS=${CACHE_DIR:-$HOME/.cache/llm-billing}/tools
WASMTIME=$TOOLS/bin/wasmtime

command -v wrk >/dev/null || { echo "==> installing wrk"; DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk >/dev/null; }
if ! "$WASMTIME" --version 2>/dev/null | grep -q '^wasmtime 48.0.8'; then
    echo "==> installing wasmtime-cli 48.0.8 (about 10 minutes on 2 cores, once)"
    cargo install --root "$TOOLS" wasmtime-cli --version 48.0.8 --locked
fi
echo "==> building billing-host (release) and the hello component"
cargo build --release -p billing-host -q
cargo build --release --target wasm32-wasip2 -p billing-host-hello -q
HELLO=target/wasm32-wasip2/release/billing_host_hello.wasm

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/" >/dev/null && return 0; sleep 0.1; done; echo "server on $1 did not start"; exit 1; }

P1=$(free_port); P2=$(free_port)
RUST_LOG=warn target/release/billing-host up -f host/bench/hello.spin.toml --listen 127.0.0.1:$P1 >/dev/null 2>&1 & H=$!
"$WASMTIME" serve -S cli=y --addr 127.0.0.1:$P2 "$HELLO" >/dev/null 2>&1 & W=$!
trap 'kill $H $W 2>/dev/null || true' EXIT
wait_up $P1; wait_up $P2

# run NAME PORT CONNECTIONS -> "rps p50_ms p99_ms"
run() {
    local threads=$(( $3 < 2 ? 1 : 2 ))
    wrk -t$threads -c$3 -d1s "http://127.0.0.1:$2/" >/dev/null  # warm-up
    wrk -t$threads -c$3 -d${DUR}s --latency "http://127.0.0.1:$2/" | python3 -c '
import sys, re
t = sys.stdin.read()
def ms(s):
    v, u = re.match(r"([\d.]+)(us|ms|s)", s).groups()
    return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", t).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", t).group(1))
print(f"{rps:.0f} {p50:.3f} {p99:.3f}")'
}

echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
echo
printf '| concurrency | server | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|\n'
for c in 1 64; do
    read -r hr h50 h99 < <(run billing-host $P1 $c)
    read -r wr w50 w99 < <(run wasmtime $P2 $c)
    printf '| %s | billing-host | %s | %s | %s |\n' $c $hr $h50 $h99
    printf '| %s | wasmtime serve | %s | %s | %s |\n' $c $wr $w50 $w99
    python3 -c "print(f'| {$c} | ratio (host / wasmtime) | {$hr/$wr:.2f} | {$h50/$w50:.2f} | {$h99/$w99:.2f} |')"
done
