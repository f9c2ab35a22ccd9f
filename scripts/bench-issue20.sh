#!/usr/bin/env bash
# Performance round three (issue 20): every figure before and after, one run each, on the same
# day. BEFORE is a chatd binary built from the commit before the round (1ec4e12), AFTER this
# checkout's release build. Writes JSON into docs/bench/issue20/.
#
# Needs cargo, psql, node (the grpc-node peer) and a PostgreSQL server at $ADMIN_URL on which
# it may create databases.
#
#   git worktree add /tmp/before 1ec4e12 && (cd /tmp/before && cargo build --release)
#   BEFORE=/tmp/before/target/release/chatd bash scripts/bench-issue20.sh [send|fanout|large|cluster|rest]...
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BASE=${ADMIN_URL%/*}
OUT=${OUT:-docs/bench/issue20}
PEERS=${PEERS:-../shared/peers}
BEFORE=${BEFORE:?BEFORE=path of the chatd built before the round}
AFTER=${AFTER:-./target/release/chatd}
SECRET=bench-secret-0123456789abcdef
ADDR=127.0.0.1:50091
NODE_ADDR=127.0.0.1:50092
MEMBERS=${MEMBERS:-100000}
mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
source scripts/lib.sh
# Starts the chatd binary $1 on a fresh database $2; sets CHATD.
start_chatd() {
  fresh_db "$2"
  env CHAT_USER_SEND_RATE=0 CHAT_USER_JOIN_RATE=0 CHAT_USER_READ_RATE=0 CHAT_USER_MAX_STREAMS=1000000 \
    CHAT_JWT_SECRET=$SECRET CHAT_ADDR=$ADDR DATABASE_URL=$PG_BASE/$2 CHAT_DATA_DIR="$(mktemp -d)" \
    RUST_LOG=warn "$1" 2> "$OUT/$2.log" & CHATD=$!; pids+=("$CHATD")
  wait_port $ADDR
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }
# bench NAME DB ARGS...: chatd-bench against the running chatd, JSON into $OUT/NAME.json.
bench() {
  local name=$1 db=$2; shift 2
  echo "== $name: chatd-bench $*" >&2
  ./target/release/chatd-bench --addr "http://$ADDR" --secret $SECRET --server-pid "$CHATD" \
    --db-name "$db" --label "${name%%-*}" --timeout 1200s --json "$@" > "$OUT/$name.json" || true
}
both() { # both NAME ARGS...: the same run on BEFORE, then on AFTER
  local name=$1; shift
  for side in before after; do
    local bin=$BEFORE; [ $side = after ] && bin=$AFTER
    start_chatd "$bin" "i20_${name//-/_}_$side"
    bench "$side-$name" "i20_${name//-/_}_$side" "$@"
    stop "$CHATD"
  done
}

[ -x ./target/release/chatd-bench ] || cargo build --release --workspace --bins
steps=${*:-send fanout large cluster rest}
for step in $steps; do case $step in
send)
  # Goal 1: persisted sends, 64 in flight over 100 rooms, limits off; two rounds, alternating.
  for round in 1 2; do both "send-$round" send --senders 64 --rooms 100 --duration 8s; done ;;
fanout)
  # Goal 2: one room, 1000 subscribers (a connection each), 32 closed-loop senders (a window
  # of 32 messages in flight), about a million deliveries; grpc-node in the same run.
  [ -d "$PEERS/grpc-node/node_modules" ] || (cd "$PEERS/grpc-node" && npm install --no-audit --no-fund --silent)
  both fanout fanout --subscribers 1000 --senders 32 --messages 31
  PROTO=$PWD/proto/chat/v1/chat.proto ADDR=$NODE_ADDR node "$PEERS/grpc-node/server.js" >/dev/null & NODE=$!; pids+=("$NODE")
  wait_port $NODE_ADDR
  echo "== grpc-node fanout" >&2
  ./target/release/chatd-bench --addr "http://$NODE_ADDR" --no-auth --server-pid "$NODE" --label grpc-node \
    --json fanout --subscribers 1000 --senders 32 --messages 31 > "$OUT/grpc-node-fanout.json" || true
  stop "$NODE" ;;
large)
  # Goal 3: a room of $MEMBERS members (100 streams a connection), then 200 timed joins. The
  # build before lists every member in each joined: it runs with 10,000 (as the issue measured).
  start_chatd "$BEFORE" i20_large_before
  bench before-large-10000 i20_large_before large-room --members 10000 --joins 200
  stop "$CHATD"
  start_chatd "$AFTER" i20_large_after
  bench after-large-$MEMBERS i20_large_after large-room --members "$MEMBERS" --joins 200
  stop "$CHATD"
  start_chatd "$AFTER" i20_large_after10
  bench after-large-10000 i20_large_after10 large-room --members 10000 --joins 200
  stop "$CHATD" ;;
cluster)
  # Goal 4, cluster fan-out: two nodes on one database and the NATS at $NATS_URL, subscribers
  # and senders round-robin over both.
  NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
  for side in before after; do
    bin=$BEFORE; [ $side = after ] && bin=$AFTER
    db=i20_cluster_$side; fresh_db $db
    key=$("$bin" cluster-key); name=i20-$side-$$; nodes=()
    for addr in 127.0.0.1:50093 127.0.0.1:50094; do
      env CHAT_USER_SEND_RATE=0 CHAT_USER_JOIN_RATE=0 CHAT_USER_READ_RATE=0 CHAT_USER_MAX_STREAMS=1000000 \
        CHAT_JWT_SECRET=$SECRET CHAT_ADDR=$addr DATABASE_URL=$PG_BASE/$db CHAT_DATA_DIR="$(mktemp -d)" \
        CHAT_CLUSTER_KEY=$key RUST_LOG=warn "$bin" --nats-url "$NATS_URL" --cluster-name "$name" & nodes+=($!); pids+=($!)
      wait_port $addr
    done
    echo "== $side-cluster-fanout" >&2
    ./target/release/chatd-bench --addr http://127.0.0.1:50093,http://127.0.0.1:50094 --secret $SECRET \
      --server-pid "${nodes[0]}" --server-pid "${nodes[1]}" --label "$side" --json \
      fanout --subscribers 1000 --senders 16 --messages 62 > "$OUT/$side-cluster-fanout.json" || true
    for p in "${nodes[@]}"; do stop "$p"; done
  done ;;
rest)
  # Goal 4: no regression elsewhere.
  both joins joins --clients 1000
  both idle idle --clients 10000
  both history history ;;
esac; done
