#!/usr/bin/env bash
# Scale-out benchmarks (issue 8), each against its single-process figure in the same run:
#
#   socketio  the Socket.IO seed as its users scale it out: two instances sharing rooms through the
#             Socket.IO Redis adapter (REDIS_URL), bench.js spreading subscribers and senders over
#             both URLs, against one instance without Redis and one instance with the adapter.
#   chatd     two chatd nodes on one PostgreSQL database and one NATS (--nats-url, --cluster-name):
#             fan-out with subscribers and senders over both nodes, persisted sends with and without
#             NATS, and presence convergence after a graceful leave and after SIGKILL of a node.
#             Skipped, with a message, unless NATS answers at $NATS_URL and target/release/chatd
#             has --nats-url.
#
# Server CPU is read from /proc/<pid> before and after each run: chatd-bench does it for the
# chatd nodes (--server-pid, once per node; the figures are summed and also given per node);
# this script does it for the Socket.IO instances and for the broker (Redis, NATS), whose CPU
# is reported beside the servers', never folded into it. One JSON per run in $OUT.
#
#   bash scripts/bench-cluster.sh                 # both sections (about 3 minutes on 2 cores)
#   SECTIONS=socketio bash scripts/bench-cluster.sh
#   QUICK=1 bash scripts/bench-cluster.sh         # smaller sizes, for a smoke run
#
# Called by scripts/bench.sh; runnable alone (then it builds nothing: run
# `cargo build --release --workspace --bins` first for the chatd section).
set -euo pipefail
cd "$(dirname "$0")/.."

ADMIN_URL=${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PG_BASE=${ADMIN_URL%/*}
PEERS=${PEERS:-../shared/peers}
OUT=${OUT:-docs/bench}
SECTIONS=${SECTIONS:-socketio chatd}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
SECRET=bench-secret-0123456789abcdef
# The benchmark measures the service, not its per-user limits: every chatd below runs with the
# send rate limit off (CHAT_USER_SEND_RATE=0) and the per-user stream cap raised.
CHATD_BIN=${CHATD_BIN:-./target/release/chatd}
BENCH_BIN=${BENCH_BIN:-./target/release/chatd-bench}
QUICK=${QUICK:-}
# One room, 1000 subscribers with a connection each, 16 closed-loop senders.
SUBS=${SUBS:-1000}
SENDERS=${SENDERS:-16}
if [ -n "$QUICK" ]; then MSGS=${MSGS:-6} DUR=3s PRESENCE_USERS=20
else MSGS=${MSGS:-31} DUR=5s PRESENCE_USERS=100; fi
CLK_TCK=$(getconf CLK_TCK)

mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

source scripts/lib.sh
hostport() { local hp=${1#*://}; hp=${hp#*@}; echo "${hp%%/*}"; }
# CPU ticks (user + system) of the given processes together; fields after the ")" of the name.
cpu_ticks() { local t=0 p; for p in "$@"; do t=$(( t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}') )); done; echo $t; }
stop() { for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
# annotate FILE key=value...: adds numeric fields to a JSON object in place.
annotate() {
  python3 - "$@" <<'EOF'
import json, sys
path, pairs = sys.argv[1], sys.argv[2:]
with open(path) as f:
    text = f.read().strip()
if not text:  # the run failed before reporting
    sys.exit(0)
run = json.loads(text)
for pair in pairs:
    k, v = pair.split("=", 1)
    run[k] = json.loads(v)
with open(path, "w") as f:
    json.dump(run, f, indent=2)
    f.write("\n")
EOF
}
ticks_to_s() { python3 -c "print(round($1 / $CLK_TCK, 3))"; }

socketio_section() {
  [ -d "$PEERS/socketio-seed/node_modules" ] || (cd "$PEERS/socketio-seed" && npm install --no-audit --no-fund --silent)
  local redis_pid
  redis_pid=$(redis-cli -u "$REDIS_URL" info server 2>/dev/null | awk -F: '/^process_id/{print $2}' | tr -d '\r' || true)
  if [ -z "$redis_pid" ] || [ ! -r "/proc/$redis_pid/stat" ]; then
    echo "== socketio: Redis does not answer at $REDIS_URL (or runs elsewhere): skipped" >&2; return 0
  fi
  # sio NAME REDIS PORT...: starts one instance per port (with the Redis adapter if REDIS is 1),
  # runs bench.js over all of them, and records the instances' CPU and Redis's.
  sio() {
    local name=$1 redis=$2; shift 2
    local ports=("$@") srv=() urls=() p
    for p in "${ports[@]}"; do
      if [ "$redis" = 1 ]; then
        (cd "$PEERS/socketio-seed" && PORT=$p REDIS_URL=$REDIS_URL exec node server.js >/dev/null) & srv+=($!)
      else
        (cd "$PEERS/socketio-seed" && PORT=$p exec node server.js >/dev/null) & srv+=($!)
      fi
      urls+=("http://127.0.0.1:$p")
    done
    for p in "${ports[@]}"; do wait_port "127.0.0.1:$p"; done
    local list
    list=$(IFS=,; echo "${urls[*]}")
    echo "== $name: bench.js $list $SUBS $SENDERS $MSGS" >&2
    # Sample the servers' and Redis's CPU every 50 ms while bench.js runs: its figures cover
    # only the send phase (its last `secs` seconds), so the CPU is read over that window too,
    # not over the connect phase before it.
    local samples
    samples=$(mktemp)
    python3 - "$samples" "$redis_pid" "${srv[@]}" <<'EOF2' & local sampler=$!
import sys, time
path, pids = sys.argv[1], sys.argv[2:]
def ticks(p):
    with open(f"/proc/{p}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])
with open(path, "w", buffering=1) as out:
    while True:
        out.write(" ".join([repr(time.time())] + [str(ticks(p)) for p in pids]) + "\n")
        time.sleep(0.05)
EOF2
    (cd "$PEERS/socketio-seed" && node bench.js "$list" "$SUBS" "$SENDERS" "$MSGS") > "$OUT/$name.json"
    local ended
    ended=$(date +%s.%N)
    sleep 0.1
    kill $sampler 2>/dev/null || true; wait $sampler 2>/dev/null || true
    stop "${srv[@]}"
    python3 - "$OUT/$name.json" "$samples" "$ended" "$CLK_TCK" "${#ports[@]}" "$redis" <<'EOF2'
import json, sys
path, samples, ended, hz, instances, redis = sys.argv[1:]
ended, hz = float(ended), int(hz)
run = json.load(open(path))
rows = [list(map(float, l.split())) for l in open(samples) if l.strip()]
start = ended - run["secs"]
# Last sample at or before the send phase began, last sample at or before bench.js ended.
first = max((r for r in rows if r[0] <= start), key=lambda r: r[0], default=rows[0])
last = max((r for r in rows if r[0] <= ended), key=lambda r: r[0])
used = [(b - a) / hz for a, b in zip(first[1:], last[1:])]
redis_cpu, per = used[0], used[1:]
cpu = sum(per)
n = max(run["delivered"], 1)
run.update({
    "instances": int(instances), "redis_adapter": redis == "1",
    "cpu_window_s": round(last[0] - first[0], 3),
    "server_cpu_seconds": round(cpu, 3),
    "server_cpu_seconds_per_instance": [round(c, 3) for c in per],
    "server_cpu_us_per_delivery": round(cpu * 1e6 / n, 2),
    "redis_cpu_seconds": round(redis_cpu, 3),
    "server_and_redis_cpu_us_per_delivery": round((cpu + redis_cpu) * 1e6 / n, 2),
    "note": "CPU read from /proc every 50 ms over bench.js's send phase (its last `secs` seconds)",
})
with open(path, "w") as f:
    json.dump(run, f, indent=2)
    f.write("\n")
EOF2
    rm -f "$samples"
  }
  sio "socketio-single-fanout-$SUBS" 0 5065
  sio "socketio-single-redis-fanout-$SUBS" 1 5066
  sio "socketio-2x-redis-fanout-$SUBS" 1 5067 5068
}

chatd_section() {
  local nats_hp
  nats_hp=$(hostport "$NATS_URL")
  if ! (exec 3<>"/dev/tcp/${nats_hp%:*}/${nats_hp#*:}") 2>/dev/null; then
    echo "== chatd cluster: no NATS at $NATS_URL: skipped" >&2; return 0
  fi
  if ! "$CHATD_BIN" --help 2>/dev/null | grep -q -- --nats-url; then
    echo "== chatd cluster: $CHATD_BIN has no --nats-url (cluster mode not built): skipped" >&2; return 0
  fi
  local nats_pid
  nats_pid=$(pidof nats-server 2>/dev/null | awk '{print $1}' || true)
  local single=127.0.0.1:50071 a=127.0.0.1:50072 b=127.0.0.1:50073
  local cluster=bench-$$-$(date +%s)
  # Every node of one cluster shares one key (traffic between nodes is sealed with it).
  # CLUSTER_KEY overrides, for a binary from before sealed traffic (it has no `cluster-key`
  # command and ignores the variable).
  local cluster_key=${CLUSTER_KEY:-}
  [ -n "$cluster_key" ] || cluster_key=$("$CHATD_BIN" cluster-key)
  fresh_db chatd_bench_single
  fresh_db chatd_bench_cluster
  CHAT_USER_SEND_RATE=0 CHAT_USER_JOIN_RATE=0 CHAT_USER_READ_RATE=0 CHAT_USER_MAX_STREAMS=1000000 CHAT_JWT_SECRET=$SECRET CHAT_ADDR=$single DATABASE_URL=$PG_BASE/chatd_bench_single \
    CHAT_DATA_DIR=$(mktemp -d) RUST_LOG=warn "$CHATD_BIN" & pids+=($!); local S=$!
  wait_port $single
  # Node A first, alone, so that it runs the migrations; then B on the same database.
  CHAT_USER_SEND_RATE=0 CHAT_USER_JOIN_RATE=0 CHAT_USER_READ_RATE=0 CHAT_USER_MAX_STREAMS=1000000 CHAT_JWT_SECRET=$SECRET CHAT_ADDR=$a DATABASE_URL=$PG_BASE/chatd_bench_cluster \
    CHAT_CLUSTER_KEY=$cluster_key CHAT_DATA_DIR=$(mktemp -d) RUST_LOG=warn "$CHATD_BIN" --nats-url "$NATS_URL" --cluster-name "$cluster" & pids+=($!); local A=$!
  wait_port $a
  CHAT_USER_SEND_RATE=0 CHAT_USER_JOIN_RATE=0 CHAT_USER_READ_RATE=0 CHAT_USER_MAX_STREAMS=1000000 CHAT_JWT_SECRET=$SECRET CHAT_ADDR=$b DATABASE_URL=$PG_BASE/chatd_bench_cluster \
    CHAT_CLUSTER_KEY=$cluster_key CHAT_DATA_DIR=$(mktemp -d) RUST_LOG=warn "$CHATD_BIN" --nats-url "$NATS_URL" --cluster-name "$cluster" & pids+=($!); local B=$!
  wait_port $b

  # cbench NAME ADDRS PIDS args...: ADDRS and PIDS comma-separated; NATS's CPU is recorded beside.
  cbench() {
    local name=$1 addrs=$2 spids=$3; shift 3
    local pidargs=() p n0 n1
    for p in ${spids//,/ }; do pidargs+=(--server-pid "$p"); done
    echo "== $name: chatd-bench --addr $addrs $*" >&2
    [ -n "$nats_pid" ] && n0=$(cpu_ticks "$nats_pid")
    local rc=0
    "$BENCH_BIN" --addr "$addrs" --secret "$SECRET" "${pidargs[@]}" --label "${name%%-*}" \
      --timeout "${RUN_TIMEOUT:-120s}" --json "$@" > "$OUT/$name.json" || rc=$?
    if [ -n "$nats_pid" ] && [ -r "/proc/$nats_pid/stat" ]; then
      n1=$(cpu_ticks "$nats_pid")
      annotate "$OUT/$name.json" "nats_cpu_seconds=$(ticks_to_s $(( n1 - n0 )))" \
        "note=\"nats_cpu_seconds: the whole nats-server at $NATS_URL, shared with anything else using it\""
    fi
    # A failed check (exit 2) or a failed run is reported and the next run goes on.
    [ $rc = 0 ] || echo "!! $name: chatd-bench exit $rc (2: a check failed; see $OUT/$name.json)" >&2
  }
  local fan=(fanout --subscribers "$SUBS" --senders "$SENDERS" --messages "$MSGS")
  # Fan-out: one node without NATS, then the same shape over two nodes (subscribers and
  # senders round-robin over A and B), then the single node again to bracket the noise.
  cbench "chatd-single-fanout-$SUBS" "http://$single" "$S" "${fan[@]}"
  cbench "chatd-2nodes-fanout-$SUBS" "http://$a,http://$b" "$A,$B" "${fan[@]}"
  cbench "chatd-single-fanout-$SUBS-again" "http://$single" "$S" "${fan[@]}"
  # Group commit makes the cost per delivery depend on the senders per node (each commit
  # wakes every stream once): two nodes with the same senders per node as the single one,
  # and one node with the senders per node of the two-node run.
  local half=$(( SENDERS / 2 )) twice=$(( SENDERS * 2 ))
  cbench "chatd-2nodes-fanout-$SUBS-s$twice" "http://$a,http://$b" "$A,$B" \
    fanout --subscribers "$SUBS" --senders "$twice" --messages $(( MSGS * SENDERS / twice ))
  cbench "chatd-single-fanout-$SUBS-s$half" "http://$single" "$S" \
    fanout --subscribers "$SUBS" --senders "$half" --messages $(( MSGS * SENDERS / half ))
  # Persisted sends: without NATS, one cluster node (NATS on the send path), two nodes.
  local snd=(send --senders 64 --rooms 100 --duration "$DUR")
  cbench chatd-single-send "http://$single" "$S" --db-name chatd_bench_single "${snd[@]}"
  cbench chatd-nats-1node-send "http://$a" "$A" --db-name chatd_bench_cluster "${snd[@]}"
  cbench chatd-2nodes-send "http://$a,http://$b" "$A,$B" --db-name chatd_bench_cluster "${snd[@]}"
  # Presence: users join on B, a watcher on A; first they leave (streams closed), then they
  # join again and B is killed with SIGKILL: the time until A emits every member_left.
  cbench chatd-2nodes-presence-leave "http://$a,http://$b" "$A,$B" presence-kill --users "$PRESENCE_USERS"
  cbench chatd-2nodes-presence-kill "http://$a,http://$b" "$A" presence-kill --users "$PRESENCE_USERS" --kill-pid "$B"
}

for section in $SECTIONS; do
  case $section in
    socketio) socketio_section ;;
    chatd) chatd_section ;;
    *) echo "unknown section $section (socketio, chatd)" >&2; exit 1 ;;
  esac
done
