# Shell helpers shared by the benchmark scripts (sourced; run from the repository root).

# A free TCP port on 127.0.0.1.
free_port() { "$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Wait until URL answers, or fail if the server PID died or took more than 10 s.
wait_up() {  # URL PID
    for _ in $(seq 100); do
        curl -s -o /dev/null "$1" && return 0
        kill -0 "$2" 2>/dev/null || { echo "server $2 died" >&2; return 1; }
        sleep 0.1
    done
    echo "server at $1 did not start" >&2; return 1
}

# The EXIT trap of a script that keeps its servers in PIDS, its scratch databases in DATABASES
# (kept with KEEP=1), its files in WORK, and uses Redis at REDIS_URL.
stop_servers_and_drop_data() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -z "${KEEP:-}" ]; then
        for db in "${DATABASES[@]}"; do
            psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
        done
    else
        echo "kept ${DATABASES[*]}"
    fi
    redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
