#!/usr/bin/env bash
# Browser tests of the web app against the real stack: scripts/up.sh starts
# Apache Kafka, redis-server, billing-bridge and billing-host (serving the API and
# the web app) on free ports with a temporary data directory; headless
# Debian chromium, driven by playwright-core, runs tests/web/app.test.mjs.
# Screenshots land in tests/web/artifacts/ (git-ignored). Then
# tests/openapi/conformance.py checks live answers against openapi.yaml,
# and schemathesis fuzzes every operation as admin and as a user: no server
# error, every status documented, every body as documented, and no error
# answer that changed data (tests/openapi/no_change_on_error.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh chromium node
[ -d tests/web/node_modules/playwright-core ] || (cd tests/web && npm install --no-audit --no-fund --silent)
python3 -c 'import jsonschema, yaml' 2>/dev/null || python3 -m pip install -q jsonschema pyyaml
command -v schemathesis >/dev/null || python3 -m pip install -q schemathesis

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port) BRIDGE_PORT=$(free_port) REDIS_PORT=$(free_port) KAFKA_PORT=$(free_port) KAFKA_CONTROLLER_PORT=$(free_port)
DATA=$(mktemp -d)
export PORT BRIDGE_PORT REDIS_PORT KAFKA_PORT KAFKA_CONTROLLER_PORT DATA
scripts/up.sh >"$DATA/up.log" 2>&1 &
up=$!
stop() {
    kill "$up" 2>/dev/null || true
    wait "$up" 2>/dev/null || true
    rm -rf "$DATA"
}
trap stop EXIT
for _ in $(seq 1800); do
    grep -q "is up" "$DATA/up.log" && break
    kill -0 "$up" 2>/dev/null || { echo "the stack did not start:"; cat "$DATA/up.log"; exit 1; }
    sleep 0.5
done
grep -q "is up" "$DATA/up.log" || { echo "the stack did not start in 15 minutes:"; cat "$DATA/up.log"; exit 1; }

read -r USER_ID USER_KEY < "$DATA/demo-keys"
APP="http://127.0.0.1:$PORT" ADMIN_KEY=$(cat "$DATA/admin-key") USER_KEY="$USER_KEY" USER_ID="$USER_ID" \
    node tests/web/app.test.mjs || { echo "--- host log"; tail -20 "$DATA/host.log"; echo "--- bridge log"; tail -20 "$DATA/bridge.log"; exit 1; }
APP="http://127.0.0.1:$PORT" ADMIN_KEY=$(cat "$DATA/admin-key") USER_KEY="$USER_KEY" USER_ID="$USER_ID" python3 tests/openapi/conformance.py
for key in "$(cat "$DATA/admin-key")" "$USER_KEY"; do
    PYTHONPATH=tests/openapi SCHEMATHESIS_HOOKS=no_change_on_error BILLING_DB="$DATA/billing.db" schemathesis run openapi.yaml --url "http://127.0.0.1:$PORT" -H "Authorization: Bearer $key" -n 20 \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,error_changes_nothing \
        --phases examples,fuzzing --request-timeout 10 --no-color | tail -4
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "schemathesis found problems (rerun without | tail to see them)"; exit 1; }
done
