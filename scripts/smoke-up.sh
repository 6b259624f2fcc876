#!/usr/bin/env bash
# Smoke test of `make up` as a newcomer runs it: `make up` in a temporary
# copy of the working tree (its own data/, the shared build cache) on free
# ports, waits until it says it is up,
# drives one chat turn through the HTTP API, sees it billed (a line item in
# SQLite and the dashboard's aggregate), stops it with Ctrl-C (SIGINT) and
# checks that no process it started is left.
set -euo pipefail
cd "$(dirname "$0")/.."
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port) BRIDGE_PORT=$(free_port) REDIS_PORT=$(free_port) KAFKA_PORT=$(free_port) KAFKA_CONTROLLER_PORT=$(free_port)
export PORT BRIDGE_PORT REDIS_PORT KAFKA_PORT KAFKA_CONTROLLER_PORT
unset DATA
COPY=$(mktemp -d)
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$COPY"
DATA="$COPY/data"
LOG="$COPY.up.log"
fail() { echo "smoke test failed: $*"; tail -20 "$LOG" || true; exit 1; }

(cd "$COPY" && exec setsid make -s up) >"$LOG" 2>&1 &
up=$!
trap 'kill -INT -- -$up 2>/dev/null || true; sleep 1; rm -rf "$COPY" "$LOG"' EXIT
for _ in $(seq 1800); do
    grep -q "is up" "$LOG" && break
    kill -0 "$up" 2>/dev/null || fail "make up exited"
    sleep 0.5
done
grep -q "is up" "$LOG" || fail "not up within 15 minutes"
curl -fsS "http://127.0.0.1:$BRIDGE_PORT/readyz" >/dev/null || fail "the bridge is not ready"

read -r _ KEY < "$DATA/demo-keys"
api() { curl -fsS -X "$1" "http://127.0.0.1:$PORT$2" -H "authorization: Bearer $KEY" -H 'content-type: application/json' ${3:+-d "$3"}; }
thread=$(api POST /api/threads '{"title": "Smoke"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["thread_id"])')
cost=$(api POST "/api/threads/$thread/messages" '{"content": "Is this billed?"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["cost"]["nanos"])')
[ "$cost" -gt 0 ] || fail "the answer cost nothing"

billed=""
for _ in $(seq 100); do
    lines=$(sqlite3 "$DATA/billing.db" "SELECT coalesce(sum(cost_nanos), 0) FROM user_invoice_line_item WHERE thread_id = $thread")
    turns=$(api GET /api/metrics/threads | python3 -c "import json,sys; t=[x for x in json.load(sys.stdin)['threads'] if x['thread_id']==$thread]; print(t[0]['cost_nanos'] if t else 0)")
    if [ "$lines" = "$cost" ] && [ "$turns" = "$cost" ]; then billed=yes; break; fi
    sleep 0.2
done
[ -n "$billed" ] || fail "the turn ($cost nano-USD) was not billed: line items $lines, dashboard $turns"
echo "smoke: one chat turn billed at $cost nano-USD, in SQLite and on the dashboard"

kill -INT -- -"$up"
for _ in $(seq 300); do kill -0 "$up" 2>/dev/null || break; sleep 0.1; done
sleep 0.5
left=$(pgrep -f -- "$COPY" || true)
[ -z "$left" ] || { ps -o pid,args -p $left; fail "processes left running"; }
for port in "$PORT" "$BRIDGE_PORT" "$REDIS_PORT" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && fail "port $port still answers"
done
echo "smoke: make up stopped on Ctrl-C and left nothing running"
