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

# NAME SHIPMENTS EVENTS [SOURCE_DIR]: a scratch database "${DB_PREFIX}_NAME_$$" built by
# bench/plans_seed.sql (SHIPMENTS shipments of EVENTS events each), served by the API of
# SOURCE_DIR (a checkout; this one by default) on a free port written to $WORK/NAME/port, and
# the requests of bench/scale_requests.py written into $WORK/NAME/. Needs BIN (absolute), PG,
# WORK, DB_PREFIX, and the arrays DATABASES and PIDS of stop_servers_and_drop_data.
serve_seeded() {
    local name=$1 size=$2 events=$3 source=${4:-$PWD} db="${DB_PREFIX}_${1}_$$" dir="$WORK/$1"
    local port started
    mkdir -p "$dir"
    DATABASES+=("$db")
    psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
    DATABASE_URL="$PG/$db" PYTHONPATH="$source" "$BIN/python" -m backend.cli migrate >/dev/null
    started=$SECONDS
    psql -h 127.0.0.1 -U postgres -d "$db" -q -v ON_ERROR_STOP=1 -v shipments="$size" \
        -v timeline="$events" -f bench/plans_seed.sql
    echo "$name: $size shipments of $events events built in $((SECONDS - started)) s," \
        "$(psql -h 127.0.0.1 -U postgres -d "$db" -Atc "SELECT pg_size_pretty(pg_database_size('$db'))")" \
        | tee "$dir/build.txt"
    port=$(free_port)
    echo "$port" >"$dir/port"
    DATABASE_URL="$PG/$db" PYTHONPATH="$source" "$BIN/python" -m backend.cli serve \
        --host 127.0.0.1 --port "$port" >"$dir/api.log" 2>&1 &
    PIDS+=("$!")
    wait_up "http://127.0.0.1:$port/health/live" "$!" || { cat "$dir/api.log"; exit 1; }
    DATABASE_URL="$PG/$db" "$BIN/python" bench/scale_requests.py "http://127.0.0.1:$port" "$dir"
}
