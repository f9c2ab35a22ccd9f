# Helpers the benchmark scripts share; sourced, with ADMIN_URL set.

# Waits (up to 10 s) until something listens on host:port $1.
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }
# Drops database $1 (closing its sessions) and creates it empty.
fresh_db() { psql "$ADMIN_URL" -q -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }
