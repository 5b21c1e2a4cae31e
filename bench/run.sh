#!/usr/bin/env bash
# Shiptrack benchmark: the API and the floor app (bench/floor.py) side by side, in one run.
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth), Redis on 127.0.0.1:6379 (db 9
# is flushed), and wrk. Run from the repository root: `make bench` or `bash bench/run.sh`.
# Knobs: DURATION (10s), THREADS (2), CONNECTIONS (32), SHIPMENTS (20); KEEP=1 keeps the data
# for bench/profile.py and bench/round_trips.py; BENCH_OUT=dir keeps wrk's outputs and the tables.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=.venv/bin
DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
SHIPMENTS=${SHIPMENTS:-20}
PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_URL=redis://127.0.0.1:6379/9

if ! command -v wrk >/dev/null 2>&1; then
    echo "wrk is not installed. On Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y wrk" >&2
    exit 1
fi
for tool in psql redis-cli; do
    command -v "$tool" >/dev/null 2>&1 || { echo "$tool is needed (postgresql-client, redis-tools)" >&2; exit 1; }
done

DB=shiptrack_bench_$$
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then
        # For bench/profile.py: the database, Redis and the seeded files stay.
        echo "kept $DB and $WORK: source $WORK/env, then python bench/profile.py api read"
        return
    fi
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" flushdb >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# shellcheck source=bench/lib.sh
source bench/lib.sh

psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $DB" >/dev/null
redis-cli -u "$REDIS_URL" flushdb >/dev/null
export DATABASE_URL="postgresql+asyncpg://postgres@$PG_HOST:$PG_PORT/$DB"
# PARTNER_APPROVAL=auto: the seeded partners take shipments without an operator.
export REDIS_URL ENVIRONMENT=dev LOG_LEVEL=WARNING PARTNER_APPROVAL=auto
# One unverified seller creates hundreds of shipments a second here: the per-seller abuse limits
# are lifted so that they never refuse, while each check still runs and is measured.
export UNVERIFIED_SELLER_SHIPMENT_LIMIT=1000000000 SHIPMENTS_PER_SELLER_PER_MINUTE=1000000000
export RECIPIENT_EMAILS_PER_SELLER_PER_HOUR=1000000000
# The API key's own limit likewise (100 a second by default): checked on every keyed read, never
# refusing.
export API_KEY_REQUESTS_PER_SECOND=1000000000
export JWT_SECRET_KEY="bench-only-key-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
ENVIRONMENT=dev "$BIN/shiptrack" migrate >/dev/null

API_PORT=$(free_port)
FLOOR_PORT=$(free_port)
# Both apps hash passwords on as many threads as the API does by default (usable cores - 1):
# a bound the API keeps so that logins never take the event loop's core.
export PASSWORD_HASH_CONCURRENCY
PASSWORD_HASH_CONCURRENCY=$("$BIN/python" -c 'from backend.config import Settings; print(Settings().password_hash_concurrency)')
# Production bcrypt cost (12, the default). The login rate limits are raised only so that the
# login stream measures hashing rather than 429s; both apps read them (the floor through Settings).
RAISED_LIMITS=(TOKEN_ATTEMPTS_PER_IP=1000000 TOKEN_ATTEMPTS_PER_ACCOUNT=1000000
    TOKEN_ATTEMPTS_PER_ACCOUNT_AND_IP=1000000 SIGNUPS_PER_IP=1000000)
env "${RAISED_LIMITS[@]}" "$BIN/shiptrack" serve --host 127.0.0.1 --port "$API_PORT" >"$WORK/api.log" 2>&1 &
API_PID=$!
PIDS+=("$API_PID")
env "${RAISED_LIMITS[@]}" FLOOR_DATABASE_URL="$DATABASE_URL" FLOOR_REDIS_URL="$REDIS_URL" \
    "$BIN/uvicorn" --app-dir bench floor:app --host 127.0.0.1 --port "$FLOOR_PORT" \
    --workers 1 --no-access-log --log-level warning >"$WORK/floor.log" 2>&1 &
FLOOR_PID=$!
PIDS+=("$FLOOR_PID")
wait_up "http://127.0.0.1:$API_PORT/health/live" "$API_PID" || { cat "$WORK/api.log"; exit 1; }
wait_up "http://127.0.0.1:$FLOOR_PORT/shipments" "$FLOOR_PID" || { cat "$WORK/floor.log"; exit 1; }
# uvicorn's worker may be a child of the launcher; measure the process that serves.
API_SERVER=$API_PID

"$BIN/python" bench/seed.py "http://127.0.0.1:$API_PORT" "$WORK" "$SHIPMENTS"
# Sellers who create at this rate have verified their email: theirs is the path measured (an
# unverified seller's creates also count against its cap under the seller's row lock).
psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d "$DB" -qc "UPDATE sellers SET email_verified_at = now()" >/dev/null
cat >"$WORK/env" <<ENV
export BENCH_WORK=$WORK DATABASE_URL=$DATABASE_URL REDIS_URL=$REDIS_URL ENVIRONMENT=dev
export JWT_SECRET_KEY=$JWT_SECRET_KEY LOG_LEVEL=WARNING PASSWORD_HASH_CONCURRENCY=$PASSWORD_HASH_CONCURRENCY
export FLOOR_DATABASE_URL=$DATABASE_URL FLOOR_REDIS_URL=$REDIS_URL
ENV
echo "seeded $SHIPMENTS shipments x 10 events (and 300 to update) into $DB"
# The floor must answer as the API does, or the ratios compare different work.
"$BIN/python" bench/same_json.py "http://127.0.0.1:$API_PORT" "http://127.0.0.1:$FLOOR_PORT" "$WORK"

RESULTS="$WORK/results.md"
echo "| workload | app | req/s | p50 | p99 | non-2xx | socket errors | peak RSS (MiB) |" >"$RESULTS"
echo "|---|---|---:|---:|---:|---:|---:|---:|" >>"$RESULTS"

rss_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# NAME APP PID OUTFILE: one table row from wrk's output.
row() {
    local out=$4
    local rps p50 p99 non2xx errs
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
    p50=$(awk '$1=="50%" {print $2}' "$out")
    p99=$(awk '$1=="99%" {print $2}' "$out")
    non2xx=$(awk '/Non-2xx/ {print $NF}' "$out"); non2xx=${non2xx:-0}
    errs=$(awk '/Socket errors/ {gsub(",",""); print $4+$6+$8+$10}' "$out"); errs=${errs:-0}
    echo "| $1 | $2 | $rps | $p50 | $p99 | $non2xx | $errs | $(rss_mib "$3") |" >>"$RESULTS"
}
run_wrk() {  # PORT SCRIPT OUTFILE ARGS...
    local port=$1 script=$2 out=$3
    shift 3
    # A short warm-up, then the measured run.
    # TIMEOUT: wrk counts a slower answer as a socket error (timeout), not as latency.
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s --timeout "${TIMEOUT:-2s}" -s "$script" \
        "http://127.0.0.1:$port" -- "$@" >/dev/null
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout "${TIMEOUT:-2s}" --latency \
        -s "$script" "http://127.0.0.1:$port" -- "$@" >"$out"
}

# Each workload runs on the API, then on the floor. Reads first, while the seeded timelines
# are exactly ten events long; the writes then add shipments and events.
port_of() { if [ "$1" = api ]; then echo "$API_PORT"; else echo "$FLOOR_PORT"; fi; }
pid_of() { if [ "$1" = api ]; then echo "$API_SERVER"; else echo "$FLOOR_PID"; fi; }
for app in api floor; do
    run_wrk "$(port_of $app)" bench/read_one.lua "$WORK/read_$app.txt" "$WORK/token" "$WORK/ids"
    row "read one (10 events)" "$app" "$(pid_of $app)" "$WORK/read_$app.txt"
    if [ "$app" = api ]; then
        # The same reads with an API key instead of the access token, right after them (the
        # floor has no keys): the key's row and account in one query and its per-key rate
        # limit, in place of the JWT, its revocation check and the account's query.
        run_wrk "$API_PORT" bench/read_one.lua "$WORK/read_key.txt" "$WORK/api_key" "$WORK/ids"
        row "read one with an API key" api "$API_SERVER" "$WORK/read_key.txt"
    fi
done
for app in api floor; do
    run_wrk "$(port_of $app)" bench/list_page.lua "$WORK/list_$app.txt" "$WORK/token"
    row "list 20" "$app" "$(pid_of $app)" "$WORK/list_$app.txt"
done
for app in api floor; do
    run_wrk "$(port_of $app)" bench/track.lua "$WORK/track_$app.txt" "$WORK/tracking_numbers"
    row "public tracking (10 events)" "$app" "$(pid_of $app)" "$WORK/track_$app.txt"
done
for app in api floor; do
    run_wrk "$(port_of $app)" bench/create.lua "$WORK/create_$app.txt" \
        "$WORK/token" "$WORK/create_body.json"
    row "create" "$app" "$(pid_of $app)" "$WORK/create_$app.txt"
done
for app in api floor; do
    run_wrk "$(port_of $app)" bench/update.lua "$WORK/update_$app.txt" \
        "$WORK/partner_token" "$WORK/update_ids" "$WORK/update_body.json"
    row "status update" "$app" "$(pid_of $app)" "$WORK/update_$app.txt"
done
# Logins are bcrypt at cost 12 on a thread: a few connections saturate the cores. Four queued
# on one hashing thread take about a second each, more on a busy host: 10 s before a timeout.
for app in api floor; do
    CONNECTIONS=4 TIMEOUT=10s run_wrk "$(port_of $app)" bench/login.lua "$WORK/login_$app.txt" "$WORK/login"
    row "log in" "$app" "$(pid_of $app)" "$WORK/login_$app.txt"
done

# Reads while a stream of logins (bcrypt cost 12) runs on the API: two connections logging in
# back to back for the whole read run.
# --timeout 10s: on a busy host a login (bcrypt on a thread at nice 10, beside the reads) can
# take longer than wrk's 2 s default, which would count it as a socket error, not as latency.
wrk -t1 -c2 -d"$(( ${DURATION%s} + 4 ))s" --latency --timeout 10s -s bench/login.lua \
    "http://127.0.0.1:$API_PORT" -- "$WORK/login" >"$WORK/logins.txt" &
LOGIN_PID=$!
PIDS+=("$LOGIN_PID")
sleep 2
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/read_one.lua \
    "http://127.0.0.1:$API_PORT" -- "$WORK/token" "$WORK/ids" >"$WORK/read_logins.txt"
row "read one under logins" api "$API_SERVER" "$WORK/read_logins.txt"
wait "$LOGIN_PID" || true
row "login stream (2 conns, during the above)" api "$API_SERVER" "$WORK/logins.txt"

# Brute force, on a second API process with the production rate limits: one address guesses
# one seller's password on 16 connections, while a bystander (another address, another seller)
# logs in once a second and the seller's reads run as before. The API trusts X-Forwarded-For
# from 127.0.0.1, which gives each side its own address.
GUARDED_PORT=$(free_port)
"$BIN/shiptrack" serve --host 127.0.0.1 --port "$GUARDED_PORT" >"$WORK/guarded.log" 2>&1 &
GUARDED_PID=$!
PIDS+=("$GUARDED_PID")
wait_up "http://127.0.0.1:$GUARDED_PORT/health/live" "$GUARDED_PID" || { cat "$WORK/guarded.log"; exit 1; }
# --timeout 10s: a login queued behind the guesses that reach bcrypt counts as latency, not as
# a wrk timeout at its 2 s default.
wrk -t1 -c16 -d"$(( ${DURATION%s} + 4 ))s" --latency --timeout 10s -s bench/login.lua \
    "http://127.0.0.1:$GUARDED_PORT" -- "$WORK/wrong_login" 203.0.113.66 >"$WORK/attack.txt" &
ATTACK_PID=$!
PIDS+=("$ATTACK_PID")
wrk -t1 -c1 -d"$(( ${DURATION%s} + 4 ))s" --latency --timeout 10s -s bench/login.lua \
    "http://127.0.0.1:$GUARDED_PORT" -- "$WORK/bystander_login" 198.51.100.7 1000 \
    >"$WORK/bystander.txt" &
BYSTANDER_PID=$!
PIDS+=("$BYSTANDER_PID")
sleep 2
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s bench/read_one.lua \
    "http://127.0.0.1:$GUARDED_PORT" -- "$WORK/token" "$WORK/ids" >"$WORK/read_attack.txt"
row "read one under brute force" api "$GUARDED_PID" "$WORK/read_attack.txt"
wait "$ATTACK_PID" "$BYSTANDER_PID" || true
row "brute force (16 conns, wrong password)" api "$GUARDED_PID" "$WORK/attack.txt"
row "bystander logins (1/s, during the above)" api "$GUARDED_PID" "$WORK/bystander.txt"

echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency; peak RSS = VmHWM after the row (cumulative per process)"
cat "$RESULTS"
echo
echo "brute force statuses: $(grep '^status' "$WORK/attack.txt" | tr '\n' ' ')"
echo "bystander statuses:   $(grep '^status' "$WORK/bystander.txt" | tr '\n' ' ')"
echo
"$BIN/python" bench/ratios.py "$RESULTS" | tee "$WORK/ratios.md"
echo
# SQL statements and round trips per request, counted in process (after the load, on the same
# data): bench/round_trips.py. The servers are stopped first: with other users of the same
# PostgreSQL, their three pools and this one could pass its max_connections (100).
for pid in "$API_PID" "$FLOOR_PID" "$GUARDED_PID"; do kill "$pid" 2>/dev/null || true; done
for pid in "$API_PID" "$FLOOR_PID" "$GUARDED_PID"; do wait "$pid" 2>/dev/null || true; done
env "${RAISED_LIMITS[@]}" "$BIN/python" bench/round_trips.py "$WORK" | tee "$WORK/round_trips.md"
# The raw wrk outputs, the tables and the servers' logs (where a non-2xx is explained).
if [ -n "${BENCH_OUT:-}" ]; then mkdir -p "$BENCH_OUT" && cp "$WORK"/*.txt "$WORK"/*.md "$WORK"/*.log "$BENCH_OUT"/; fi
