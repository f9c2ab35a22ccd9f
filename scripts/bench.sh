#!/usr/bin/env bash
# Side-by-side benchmarks: chatd and the grpc-node peer driven by chatd-bench, and the Socket.IO
# seed driven by its own bench.js, all on this machine. Writes one JSON file per run into
# docs/bench/ and draws docs/bench/fanout.svg (scripts/chart.py).
#
# Needs cargo, node/npm, python3 and a PostgreSQL server at $ADMIN_URL on which it may create
# the databases chatd_bench and peer_bench. The peers live in ../shared/peers beside the project.
#
#   bash scripts/bench.sh            # everything (about 10 minutes on 2 cores)
#   QUICK=1 bash scripts/bench.sh    # smaller sizes, for a smoke run
#   METRICS=1 OUT=/tmp/bench-metrics bash scripts/bench.sh
#                                    # every chatd also keeps and serves Prometheus metrics
#                                    # (CHAT_METRICS_ADDR, 127.0.0.1:9091-9093): compare with a
#                                    # run without METRICS for what counting costs
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BASE=${ADMIN_URL%/*}
PEERS=${PEERS:-../shared/peers}
OUT=${OUT:-docs/bench}
SECRET=bench-secret-0123456789abcdef
# The benchmark measures the service, not its per-user limits: every chatd below runs with the
# send, join and read rate limits off (CHAT_USER_SEND_RATE=0, CHAT_USER_JOIN_RATE=0, CHAT_USER_READ_RATE=0) and the per-user
# stream cap raised.
CHATD_ADDR=127.0.0.1:50051
SQLITE_ADDR=127.0.0.1:50052
ONE_ADDR=127.0.0.1:50053
NODE_ADDR=127.0.0.1:50061
NODE_DB_ADDR=127.0.0.1:50062
SIO_PORT=5055
QUICK=${QUICK:-}
METRICS=${METRICS:-}
# The environment that turns a chatd's metrics on at 127.0.0.1:$1 (METRICS=1), or off.
metrics_env() { if [ -n "$METRICS" ]; then echo "CHAT_METRICS_ADDR=127.0.0.1:$1"; else echo "-u CHAT_METRICS_ADDR"; fi; }
if [ -n "$QUICK" ]; then TOTAL=100000 BEST=10 OPEN=75 DUR=3s IDLE=1000
else TOTAL=1000000 BEST=125 OPEN=600 DUR=10s IDLE=10000; fi

mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

source scripts/lib.sh

cargo build --release --workspace --bins
for peer in grpc-node socketio-seed; do
  [ -d "$PEERS/$peer/node_modules" ] || (cd "$PEERS/$peer" && npm install --no-audit --no-fund --silent)
done

fresh_db chatd_bench
fresh_db peer_bench
env $(metrics_env 9091) CHAT_USER_SEND_RATE=0 CHAT_USER_JOIN_RATE=0 CHAT_USER_READ_RATE=0 CHAT_USER_MAX_STREAMS=1000000 CHAT_JWT_SECRET=$SECRET CHAT_ADDR=$CHATD_ADDR DATABASE_URL=$PG_BASE/chatd_bench \
  CHAT_DATA_DIR=$(mktemp -d) RUST_LOG=warn ./target/release/chatd & pids+=($!); CHATD=$!
env $(metrics_env 9092) CHAT_USER_SEND_RATE=0 CHAT_USER_JOIN_RATE=0 CHAT_USER_READ_RATE=0 CHAT_USER_MAX_STREAMS=1000000 CHAT_JWT_SECRET=$SECRET CHAT_ADDR=$SQLITE_ADDR DATABASE_URL=sqlite://$(mktemp -d)/chat.db \
  CHAT_DATA_DIR=$(mktemp -d) RUST_LOG=warn ./target/release/chatd & pids+=($!); CHATD_SQLITE=$!
fresh_db chatd_bench_one
env $(metrics_env 9093) CHAT_WORKER_THREADS=1 CHAT_USER_SEND_RATE=0 CHAT_USER_JOIN_RATE=0 CHAT_USER_READ_RATE=0 CHAT_USER_MAX_STREAMS=1000000 CHAT_JWT_SECRET=$SECRET CHAT_ADDR=$ONE_ADDR DATABASE_URL=$PG_BASE/chatd_bench_one \
  CHAT_DATA_DIR=$(mktemp -d) RUST_LOG=warn ./target/release/chatd & pids+=($!); CHATD_ONE=$!
PROTO=$PWD/proto/chat/v1/chat.proto ADDR=$NODE_ADDR node "$PEERS/grpc-node/server.js" >/dev/null & pids+=($!); NODE=$!
PROTO=$PWD/proto/chat/v1/chat.proto ADDR=$NODE_DB_ADDR DATABASE_URL=$PG_BASE/peer_bench \
  node "$PEERS/grpc-node/server.js" >/dev/null & pids+=($!); NODE_DB=$!
(cd "$PEERS/socketio-seed" && PORT=$SIO_PORT exec node server.js >/dev/null) & pids+=($!)
wait_port $CHATD_ADDR; wait_port $SQLITE_ADDR; wait_port $ONE_ADDR; wait_port $NODE_ADDR; wait_port $NODE_DB_ADDR; wait_port 127.0.0.1:$SIO_PORT

bench() { # name server-pid addr auth-flag args...
  local name=$1 pid=$2 addr=$3 auth=$4; shift 4
  echo "== $name: chatd-bench $*" >&2
  ./target/release/chatd-bench --addr "http://$addr" $auth --server-pid "$pid" --label "${name%%-*}" \
    --json "$@" > "$OUT/$name.json"
}
CHATD_AUTH="--secret $SECRET"
NOAUTH=--no-auth

# Fan-out: one room, S subscribers with a connection each, 16 closed-loop senders, about
# a million deliveries per run.
SENDERS=16
for subs in 100 250 500 1000; do
  msgs=$(( TOTAL / subs / SENDERS ))
  bench "chatd-fanout-$subs" $CHATD $CHATD_ADDR "$CHATD_AUTH" fanout --subscribers $subs --senders $SENDERS --messages $msgs
  bench "grpcnode-fanout-$subs" $NODE $NODE_ADDR $NOAUTH fanout --subscribers $subs --senders $SENDERS --messages $msgs
  echo "== socketio-fanout-$subs: bench.js $subs $SENDERS $msgs" >&2
  (cd "$PEERS/socketio-seed" && node bench.js "http://127.0.0.1:$SIO_PORT" $subs $SENDERS $msgs) > "$OUT/socketio-fanout-$subs.json"
done
# chatd with one worker thread, leaving the other core to the load generator.
bench chatd1-fanout-1000 $CHATD_ONE $ONE_ADDR "$CHATD_AUTH" fanout --subscribers 1000 --senders $SENDERS --messages $(( TOTAL / 1000 / SENDERS ))
bench chatd1-fanout-1000-s32 $CHATD_ONE $ONE_ADDR "$CHATD_AUTH" fanout --subscribers 1000 --senders 32 --messages $BEST
bench chatd1-fanout-1000-open300 $CHATD_ONE $ONE_ADDR "$CHATD_AUTH" fanout --subscribers 1000 --senders 4 --rate 75 --messages $OPEN
# chatd at its best: more senders, and streams sharing connections.
bench chatd-fanout-1000-s32 $CHATD $CHATD_ADDR "$CHATD_AUTH" fanout --subscribers 1000 --senders 32 --messages $BEST
bench chatd-fanout-1000-k50 $CHATD $CHATD_ADDR "$CHATD_AUTH" fanout --subscribers 1000 --streams-per-conn 50 --senders 32 --messages $BEST
# Open loop at a fixed rate: 4 senders x 75/s = 300 messages/s to 1000 subscribers.
bench chatd-fanout-1000-open300 $CHATD $CHATD_ADDR "$CHATD_AUTH" fanout --subscribers 1000 --senders 4 --rate 75 --messages $OPEN

# Persisted sends: 64 concurrent senders sharing 4 connections (send's default) over 100 rooms.
bench chatd-send $CHATD $CHATD_ADDR "$CHATD_AUTH --db-name chatd_bench" send --senders 64 --rooms 100 --duration $DUR
bench chatd1-send $CHATD_ONE $ONE_ADDR "$CHATD_AUTH --db-name chatd_bench_one" send --senders 64 --rooms 100 --duration $DUR
bench chatd-sqlite-send $CHATD_SQLITE $SQLITE_ADDR "$CHATD_AUTH" send --senders 64 --rooms 100 --duration $DUR
bench grpcnode-db-send $NODE_DB $NODE_DB_ADDR "$NOAUTH --db-name peer_bench" send --senders 64 --rooms 100 --duration $DUR --no-verify
# Ack latency at about half of chatd's closed-loop maximum.
half=$(python3 -c "import json;r=json.load(open('$OUT/chatd-send.json'));print(int(dict(r['figures'])['acknowledged sends/s']/2))")
bench chatd-send-half $CHATD $CHATD_ADDR "$CHATD_AUTH --db-name chatd_bench" send --senders 64 --rooms 100 --duration $DUR --rate "$half"
# Idempotent sends (a client_message_id on each) into one room, empty and then holding a million
# messages of the same senders, each room preloaded by one INSERT ... SELECT generate_series.
bench chatd-send-idem $CHATD $CHATD_ADDR "$CHATD_AUTH --db-name chatd_bench" send --senders 64 --rooms 1 --duration $DUR --idempotent
bench chatd-send-idem-1m $CHATD $CHATD_ADDR "$CHATD_AUTH --db-name chatd_bench" send --senders 64 --rooms 1 --duration $DUR --idempotent \
  --preload 1000000 --database-url "$PG_BASE/chatd_bench"

# Idle streams, history reads, join/leave churn.
bench chatd-idle $CHATD $CHATD_ADDR "$CHATD_AUTH" idle --clients $IDLE
bench chatd-idle-shared $CHATD $CHATD_ADDR "$CHATD_AUTH" idle --clients $(( IDLE / 10 )) --streams-per-conn 10
bench grpcnode-idle $NODE $NODE_ADDR $NOAUTH idle --clients $IDLE
bench chatd-history $CHATD $CHATD_ADDR "$CHATD_AUTH" history --messages 10000 --clients 16 --duration $DUR
bench grpcnode-history $NODE $NODE_ADDR $NOAUTH history --messages 10000 --clients 16 --duration $DUR
bench chatd-churn $CHATD $CHATD_ADDR "$CHATD_AUTH" churn --clients 64 --duration $DUR
bench chatd-joins $CHATD $CHATD_ADDR "$CHATD_AUTH --db-name chatd_bench" joins --clients 1000
bench grpcnode-churn $NODE $NODE_ADDR $NOAUTH churn --clients 64 --duration $DUR

# Scale-out (issue 8): the Socket.IO seed on its Redis adapter (two instances against one), and
# chatd's cluster over NATS (two nodes against one, sends with and without NATS, presence after a
# node is killed) when NATS answers and this build has --nats-url. See scripts/bench-cluster.sh.
OUT=$OUT QUICK=$QUICK ADMIN_URL=$ADMIN_URL PEERS=$PEERS bash scripts/bench-cluster.sh

python3 scripts/chart.py "$OUT"
