#!/usr/bin/env bash
# `make up`: the system on embedded defaults — a SQLite file under data/, a
# local redis-server, Apache Kafka (one KRaft node storing in data/kafka,
# scripts/kafka-broker.sh), billing-host serving spin.toml (API and web app) and
# billing-bridge — then the URL and the demo API keys. Ctrl-C stops
# everything this script started.
#
# Settings (environment): PORT (3000), BRIDGE_PORT (3100), REDIS_PORT (6379),
# KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), DATA (data), ANTHROPIC_API_KEY (unset: chats go to llm-sim).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-3000}
BRIDGE_PORT=${BRIDGE_PORT:-3100}
REDIS_PORT=${REDIS_PORT:-6379}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
DATA=${DATA:-data}
say() { printf '==> %s\n' "$*"; }

scripts/ensure-deps.sh wasm redis sqlite3 kafka
make -s target
mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd)

say "building billing-host, billing-bridge and billing-migrate (the first build takes several minutes)"
cargo build -q -p billing-host -p billing-bridge -p billing-migrations
say "building the components and the web app (the first web build installs wasm-bindgen-cli: a few minutes)"
target/debug/billing-host build >/dev/null
say "migrating $DATA/billing.db"
target/debug/billing-migrate --db "$DATA/billing.db"

# The bootstrap admin key, and a key for each seeded demo user, made once and kept.
[ -s "$DATA/admin-key" ] || { printf 'lcb_admin_%s\n' "$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$DATA/admin-key"; chmod 600 "$DATA/admin-key"; }
ADMIN_KEY=$(cat "$DATA/admin-key")
if [ ! -s "$DATA/demo-keys" ]; then
    for uid in 2 3; do
        key="lcb_$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')"
        hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
        sqlite3 "$DATA/billing.db" "INSERT INTO api_keys (user_id, key_prefix, key_hash, label) VALUES ($uid, '${key:0:12}', '$hash', 'demo');"
        echo "$uid $key" >> "$DATA/demo-keys"
    done
    chmod 600 "$DATA/demo-keys"
fi
demo_name() { sqlite3 "$DATA/billing.db" "SELECT name FROM dim_users WHERE user_id = $1"; }
DEMO_KEYS=$(while read -r uid key; do printf '%s (user %s)=%s;' "$(demo_name "$uid")" "$uid" "$key"; done < "$DATA/demo-keys")

pids=()
cleanup() {
    trap - INT TERM EXIT
    say "stopping"
    # Newest first: the host, the bridge (which finishes its batch while the broker is still up), then Kafka and Redis.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || continue
        for _ in $(seq 250); do kill -0 "${pids[i]}" 2>/dev/null || break; sleep 0.1; done
        kill -9 "${pids[i]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
    say "using the redis-server already on port $REDIS_PORT"
else
    say "starting redis-server on port $REDIS_PORT (data in $DATA)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DATA" --dbfilename redis.rdb --save 60 1 >"$DATA/redis.log" 2>&1 &
    pids+=($!)
fi

say "starting Apache Kafka on port $KAFKA_PORT (data in $DATA/kafka)"
scripts/kafka-broker.sh "$DATA/kafka" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" >"$DATA/kafka.log" 2>&1 &
pids+=($!)
for _ in $(seq 900); do
    grep -q "Kafka Server started" "$DATA/kafka.log" 2>/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "Apache Kafka failed to start; see $DATA/kafka.log"; tail -5 "$DATA/kafka.log"; exit 1; }
    sleep 0.1
done
grep -q "Kafka Server started" "$DATA/kafka.log" || { echo "Apache Kafka did not start within 90 s; see $DATA/kafka.log"; tail -5 "$DATA/kafka.log"; exit 1; }

say "starting billing-bridge (outbox relay, consumers, live updates on port $BRIDGE_PORT)"
BILLING_DB="$DATA/billing.db" BILLING_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT" BILLING_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
    BILLING_HTTP_LISTEN="127.0.0.1:$BRIDGE_PORT" BILLING_ADMIN_API_KEY="$ADMIN_KEY" \
    target/debug/billing-bridge run 2>"$DATA/bridge.log" &
pids+=($!)
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$BRIDGE_PORT/healthz" >/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "billing-bridge failed to start; see $DATA/bridge.log"; tail -5 "$DATA/bridge.log"; exit 1; }
    sleep 0.2
done

export SPIN_VARIABLE_ADMIN_API_KEY="$ADMIN_KEY"
export SPIN_VARIABLE_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export SPIN_VARIABLE_LIVE_URL="http://127.0.0.1:$BRIDGE_PORT"
export SPIN_VARIABLE_DEMO_KEYS="$DEMO_KEYS"
if [ -n "${ANTHROPIC_API_KEY:-}" ]; then
    export SPIN_VARIABLE_ANTHROPIC_API_KEY="$ANTHROPIC_API_KEY"
    provider="Anthropic (ANTHROPIC_API_KEY is set)"
else
    provider="llm-sim, the built-in simulator (set ANTHROPIC_API_KEY to use Anthropic)"
fi

# runtime-config.toml names data/billing.db; another DATA gets a runtime config of its own.
RUNTIME_CONFIG=runtime-config.toml
if [ "$DATA" != "$PWD/data" ]; then
    RUNTIME_CONFIG="$DATA/runtime-config.toml"
    printf '[sqlite_database.default]\ntype = "spin"\npath = "%s/billing.db"\n' "$DATA" > "$RUNTIME_CONFIG"
fi

say "starting billing-host on http://127.0.0.1:$PORT"
# Model calls may take minutes and carry large prompts: the components that
# make or serve them get 15 minutes and 32 MiB (docker-compose.yml says the same).
export BILLING_HOST_COMPONENT_LIMITS="${BILLING_HOST_COMPONENT_LIMITS:-gateway:timeout_ms=900000,max_body_bytes=33554432;messages:timeout_ms=900000;llm-sim:timeout_ms=900000,max_body_bytes=33554432}"
target/debug/billing-host up --runtime-config-file "$RUNTIME_CONFIG" --listen "127.0.0.1:$PORT" 2>"$DATA/host.log" &
pids+=($!)
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$PORT/.well-known/spin/health" >/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "billing-host failed to start; see $DATA/host.log"; tail -5 "$DATA/host.log"; exit 1; }
    sleep 0.2
done

cat <<MSG

  LLM chat billing is up: http://127.0.0.1:$PORT   (live updates: http://127.0.0.1:$BRIDGE_PORT/events/stream)
  Model provider: $provider

  API keys (also in $DATA/admin-key and $DATA/demo-keys):
    admin (Administrator)   $ADMIN_KEY
$(while read -r uid key; do printf '    user %s (%s)  %s\n' "$uid" "$(demo_name "$uid")" "$key"; done < "$DATA/demo-keys")

  Open the URL and sign in with a key, or:
    curl -s -X POST http://127.0.0.1:$PORT/api/threads -H "authorization: Bearer <key>" -H 'content-type: application/json' -d '{"title": "Hello"}'
  Logs: $DATA/host.log, $DATA/bridge.log, $DATA/kafka.log, $DATA/redis.log.   Ctrl-C stops everything.

MSG
wait "${pids[-1]}"
