#!/usr/bin/env bash
# Webhooks (issue 19): persisted sends with webhooks off and on (a local receiver that answers
# at once, bench/src/bin/webhook-sink.rs), two rounds each, alternating; then how fast a backlog
# of 100,000 events drains. Writes JSON and logs into docs/bench/issue19/.
#
# Needs cargo, psql and a PostgreSQL server at $ADMIN_URL on which it may create databases.
#
#   bash scripts/bench-webhooks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BASE=${ADMIN_URL%/*}
OUT=${OUT:-docs/bench/issue19}
SECRET=bench-secret-0123456789abcdef
WHSEC=whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
ADDR=127.0.0.1:50071
SINK=127.0.0.1:8099
BACKLOG=${BACKLOG:-100000}
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

source scripts/lib.sh
sql() { psql "$PG_BASE/$1" -tAq -c "$2"; }
# CPU seconds (user + system) of a process so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }
# Starts chatd on database $1 with the extra environment "${@:2}"; sets CHATD.
start_chatd() {
  local db=$1; shift
  env CHAT_USER_SEND_RATE=0 CHAT_USER_JOIN_RATE=0 CHAT_USER_READ_RATE=0 CHAT_JWT_SECRET=$SECRET \
    CHAT_ADDR=$ADDR DATABASE_URL=$PG_BASE/$db CHAT_DATA_DIR="$(mktemp -d)" RUST_LOG=warn "$@" \
    ./target/release/chatd & CHATD=$!; pids+=("$CHATD")
  wait_port $ADDR
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
bench() { ./target/release/chatd-bench --addr "http://$ADDR" --secret $SECRET --server-pid "$CHATD" --db-name "$1" --json "${@:2}"; }

cargo build --release --workspace --bins

for round in 1 2; do
  fresh_db hooks_off
  start_chatd hooks_off
  bench hooks_off send --senders 64 --rooms 100 --duration 8s > "$OUT/send-off-$round.json"
  stop "$CHATD"

  fresh_db hooks_on
  ./target/release/webhook-sink $SINK > "$OUT/sink-on-$round.log" & SINK_PID=$!; pids+=("$SINK_PID")
  wait_port $SINK
  start_chatd hooks_on CHAT_WEBHOOK_URL="http://$SINK/hooks" CHAT_WEBHOOK_SECRET=$WHSEC
  bench hooks_on send --senders 64 --rooms 100 --duration 8s > "$OUT/send-on-$round.json"
  echo "round $round, webhooks on: $(sql hooks_on 'SELECT count(*) FROM webhook_outbox') events still waiting when the sends stopped" | tee -a "$OUT/summary.txt"
  stop "$CHATD"; stop "$SINK_PID"
done

# A backlog: sends acknowledged while the receiver refuses connections.
fresh_db hooks_drain
start_chatd hooks_drain CHAT_WEBHOOK_URL="http://$SINK/hooks" CHAT_WEBHOOK_SECRET=$WHSEC
while [ "$(sql hooks_drain 'SELECT count(*) FROM webhook_outbox')" -lt "$BACKLOG" ]; do
  bench hooks_drain send --senders 64 --rooms 100 --duration 5s > /dev/null
done
stop "$CHATD"
WAITING=$(sql hooks_drain 'SELECT count(*) FROM webhook_outbox')
# Every event due now (the refused tries had scheduled them up to a minute ahead): this
# measures sending, not the backoff schedule.
sql hooks_drain 'UPDATE webhook_outbox SET due_micros = 0, attempts = 0' > /dev/null
./target/release/webhook-sink $SINK --expect "$WAITING" > "$OUT/sink-drain.log" & SINK_PID=$!; pids+=("$SINK_PID")
wait_port $SINK
start_chatd hooks_drain CHAT_WEBHOOK_URL="http://$SINK/hooks" CHAT_WEBHOOK_SECRET=$WHSEC
START=$(date +%s.%N)
wait "$SINK_PID"
END=$(date +%s.%N)
CPU=$(cpu_of "$CHATD")
stop "$CHATD"
LEFT=$(sql hooks_drain 'SELECT count(*) FROM webhook_outbox')
awk -v n="$WAITING" -v s="$START" -v e="$END" -v cpu="$CPU" -v left="$LEFT" 'BEGIN {
  printf "drain: %d events in %.1f s from start-up: %.0f/s; chatd CPU %.1f s (%.0f us per event); %d left in the outbox\n",
    n, e - s, n / (e - s), cpu, cpu * 1e6 / n, left }' | tee -a "$OUT/summary.txt"
tail -1 "$OUT/sink-drain.log" | tee -a "$OUT/summary.txt"
