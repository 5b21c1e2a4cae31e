#!/usr/bin/env bash
# Scale benchmark (issue 14): the same workloads on a small database and on a big one, in one
# run, and each workload's p99 on the big data against the small. Both databases have the same
# shape (bench/plans_seed.sql, built by SQL): seller 1 owns 40 % of the shipments and partner 1
# carries 25 %, with SMALL (10,000: enough for a full page in every workload) and BIG
# (1,000,000) shipments of TIMELINE (5) events each. The big build takes a few minutes and
# about 3 GB. A third, "long", has 1,000 shipments of LONG_TIMELINE (200, the cap) events each,
# for a list's first page with its timelines and without (`include=`).
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth), Redis on 127.0.0.1:6379 (db 9
# is flushed) and wrk. Run from the repository root: `bash bench/scale.sh`.
# Each workload runs ROUNDS (3) times on each database, alternating, and the table compares the
# medians: on a shared two-core host one run's p99 moves by up to 1.5x on its own. Eight
# connections keep the p99 close to what a request costs rather than to the queue before it.
# Knobs: SMALL, BIG, TIMELINE, LONG_TIMELINE, ROUNDS, DURATION (5s), THREADS (2), CONNECTIONS (8);
# BENCH_OUT=dir keeps wrk's outputs, the plans and the table; KEEP=1 keeps the databases.
# Takes about 20 minutes with the defaults.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
DB_PREFIX=shiptrack_scale
SMALL=${SMALL:-10000}
BIG=${BIG:-1000000}
TIMELINE=${TIMELINE:-5}
LONG_TIMELINE=${LONG_TIMELINE:-200}
DURATION=${DURATION:-5s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-8}
ROUNDS=${ROUNDS:-3}
PG="postgresql+asyncpg://postgres@127.0.0.1:5432"
REDIS_URL=redis://127.0.0.1:6379/9

command -v wrk >/dev/null 2>&1 || { echo "wrk is needed: sudo apt-get install -y wrk" >&2; exit 1; }
# shellcheck source=bench/lib.sh
source bench/lib.sh

WORK=$(mktemp -d)
DATABASES=()
PIDS=()
trap stop_servers_and_drop_data EXIT INT TERM

export REDIS_URL ENVIRONMENT=dev LOG_LEVEL=WARNING
export JWT_SECRET_KEY="bench-only-key-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
# One seller creates hundreds of shipments a second here: the per-seller abuse limits are lifted
# so that they never refuse, while each check still runs and is measured.
export SHIPMENTS_PER_SELLER_PER_MINUTE=1000000000 RECIPIENT_EMAILS_PER_SELLER_PER_HOUR=1000000000
redis-cli -u "$REDIS_URL" flushdb >/dev/null

# WORKLOAD SCRIPT ARGS...: ROUNDS times on each database of $DATABASE_PAIR, one right after the
# other so that each pair of runs sees the same host, the first alternating between the two (a
# 2 s warm-up, then the measured run). Arguments naming `DIR/` are each database's own files.
DATABASE_PAIR="small big"
measure() {
    local workload=$1 script=$2 name port round order
    shift 2
    for round in $(seq "$ROUNDS"); do
        order=$DATABASE_PAIR
        if [ $((round % 2)) -eq 0 ]; then order=$(echo "$order" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}'); fi
        for name in $order; do
            port=$(cat "$WORK/$name/port")
            local args=("${@//DIR/$WORK/$name}")
            # --timeout 10s: a slow answer counts as latency, not as a socket error.
            wrk -t"$THREADS" -c"$CONNECTIONS" -d2s --timeout 10s -s "$script" \
                "http://127.0.0.1:$port" -- "${args[@]}" >/dev/null
            wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --timeout 10s --latency -s "$script" \
                "http://127.0.0.1:$port" -- "${args[@]}" >"$WORK/$name/$workload.$round.txt"
        done
    done
}

serve_seeded small "$SMALL" "$TIMELINE"
serve_seeded big "$BIG" "$TIMELINE"
serve_seeded long 1000 "$LONG_TIMELINE"
# Reads first, on the data as built; then the writes, which add to it.
for workload in read_one first_page first_page_bare deep_page tag_absent tag_present \
    status_cancelled events_first events_after; do
    measure "$workload" bench/get.lua "DIR/$workload.paths" DIR/seller_token
done
measure track bench/get.lua DIR/track.paths
for workload in partner_first_page partner_deep_page; do
    measure "$workload" bench/get.lua "DIR/$workload.paths" DIR/partner_token
done
measure create bench/create.lua DIR/seller_token DIR/create_body.json
measure update bench/update.lua DIR/partner_token DIR/update_ids DIR/update_body.json
# Pages of shipments with long timelines (LONG_TIMELINE events each), with their timelines and
# without (`include=`).
DATABASE_PAIR=long
for workload in first_page first_page_bare; do
    measure "$workload" bench/get.lua "DIR/$workload.paths" DIR/seller_token
done
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
# The plans of the service's statements on the big data (after the writes above); its cases
# name shipment 150,000 and its neighbours.
if [ "$BIG" -ge 250000 ]; then
    DATABASE_URL="$PG/${DB_PREFIX}_big_$$" "$BIN/python" bench/plans.py >"$WORK/big/plans.md"
fi
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, one API process each, medians of $ROUNDS rounds; $TIMELINE events per shipment"
"$BIN/python" bench/scale_table.py "$WORK/small" "$WORK/big" "$WORK/long" | tee "$WORK/scale.md"
if [ -n "${BENCH_OUT:-}" ]; then
    mkdir -p "$BENCH_OUT" && cp -r "$WORK"/small "$WORK"/big "$WORK"/long "$WORK"/scale.md "$BENCH_OUT"/
fi
