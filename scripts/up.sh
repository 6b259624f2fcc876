#!/usr/bin/env bash
# `make up`: the system on embedded defaults — a SQLite file under data/, a
# local redis-server, Tansu (a Kafka-protocol broker storing in
# data/tansu.db), billing-host serving spin.toml and billing-bridge — then
# the URL and the demo API keys. Ctrl-C stops everything this script started.
#
# Settings (environment): PORT (3000), REDIS_PORT (6379), KAFKA_PORT (9092),
# ANTHROPIC_API_KEY (unset: chats go to llm-sim).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-3000}
REDIS_PORT=${REDIS_PORT:-6379}
KAFKA_PORT=${KAFKA_PORT:-9092}
TANSU=${TANSU:-${CACHE_DIR:-$HOME/.cache/llm-billing}/tools/bin/tansu}
say() { printf '==> %s\n' "$*"; }

scripts/ensure-deps.sh wasm redis sqlite3 tansu
make -s target
mkdir -p data

say "building billing-host, billing-bridge and billing-migrate (the first build takes several minutes)"
cargo build -q -p billing-host -p billing-bridge -p billing-migrations
say "building the components"
target/debug/billing-host build >/dev/null
say "migrating data/billing.db"
target/debug/billing-migrate --db data/billing.db

pids=()
cleanup() {
    trap - INT TERM EXIT
    say "stopping"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    say "using the redis-server already on port $REDIS_PORT"
else
    say "starting redis-server on port $REDIS_PORT (data in data/)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$PWD/data" --dbfilename redis.rdb --save 60 1 >data/redis.log 2>&1 &
    pids+=($!)
fi

say "starting Tansu (Kafka protocol) on port $KAFKA_PORT (data in data/tansu.db)"
# Tansu resolves a sqlite:// path against its working directory.
(cd data && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "sqlite://tansu.db" >tansu.log 2>&1) &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.1; done

say "starting billing-bridge (outbox relay, token-metrics consumer)"
BILLING_DB=data/billing.db BILLING_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT" BILLING_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    target/debug/billing-bridge run 2>data/bridge.log &
pids+=($!)

[ -s data/admin-key ] || { printf 'lcb_admin_%s\n' "$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')" > data/admin-key; chmod 600 data/admin-key; }
ADMIN_KEY=$(cat data/admin-key)
export SPIN_VARIABLE_ADMIN_API_KEY="$ADMIN_KEY"
export SPIN_VARIABLE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
if [ -n "${ANTHROPIC_API_KEY:-}" ]; then
    export SPIN_VARIABLE_ANTHROPIC_API_KEY="$ANTHROPIC_API_KEY"
    provider="Anthropic (ANTHROPIC_API_KEY is set)"
else
    provider="llm-sim, the built-in simulator (set ANTHROPIC_API_KEY to use Anthropic)"
fi

say "starting billing-host on http://127.0.0.1:$PORT"
target/debug/billing-host up --runtime-config-file runtime-config.toml --listen "127.0.0.1:$PORT" 2>data/host.log &
pids+=($!)
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$PORT/.well-known/spin/health" >/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "billing-host failed to start; see data/host.log"; tail -5 data/host.log; exit 1; }
    sleep 0.2
done

# Demo keys for the seeded demo users, issued once through the API.
if [ ! -s data/demo-keys ]; then
    for uid in 2 3; do
        curl -sf -X POST "http://127.0.0.1:$PORT/api/keys" -H "authorization: Bearer $ADMIN_KEY" \
            -H 'content-type: application/json' -d "{\"user_id\": $uid, \"label\": \"demo\"}" |
            python3 -c 'import json,sys; k=json.load(sys.stdin); print(k["user_id"], k["key"])' >> data/demo-keys
    done
fi

cat <<MSG

  LLM chat billing is up: http://127.0.0.1:$PORT
  Model provider: $provider

  API keys (also in data/admin-key and data/demo-keys):
    admin (Administrator)   $ADMIN_KEY
$(while read -r uid key; do name=$([ "$uid" = 2 ] && echo "Ada Lovelace" || echo "Grace Hopper"); printf '    user %s (%s)  %s\n' "$uid" "$name" "$key"; done < data/demo-keys)

  Try:  curl -s -X POST http://127.0.0.1:$PORT/api/threads -H "authorization: Bearer <key>" -H 'content-type: application/json' -d '{"title": "Hello"}'
  Logs: data/host.log, data/bridge.log, data/tansu.log, data/redis.log.   Ctrl-C stops everything.

MSG
wait "${pids[-1]}"
