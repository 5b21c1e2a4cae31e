#!/usr/bin/env bash
# Creates into a zip that one partner serves (issue 14 item 3): every create there needs the same
# partner row, so throughput follows how long each create holds it. Compares the API of two
# source trees in one run, alternating ROUNDS (3) rounds of wrk against each:
#   bash bench/one_zip_creates.sh BEFORE_DIR AFTER_DIR
# Each directory is a checkout of the repository (git worktree add, or git archive | tar -x);
# both run on this checkout's virtualenv, with their own `backend` first on PYTHONPATH, each on
# its own scratch database (bench/plans_seed.sql, 10,000 shipments; the zip's partner has room).
# Knobs: DURATION (10s), CONNECTIONS (32), ROUNDS (3). Needs what bench/scale.sh needs.
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
PG="postgresql+asyncpg://postgres@127.0.0.1:5432"
DB_PREFIX=shiptrack_one_zip
export REDIS_URL=redis://127.0.0.1:6379/9 ENVIRONMENT=dev LOG_LEVEL=WARNING
export JWT_SECRET_KEY="bench-only-key-$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
export SHIPMENTS_PER_SELLER_PER_MINUTE=1000000000 RECIPIENT_EMAILS_PER_SELLER_PER_HOUR=1000000000
# shellcheck source=bench/lib.sh
source bench/lib.sh

WORK=$(mktemp -d)
PIDS=()
DATABASES=()
trap stop_servers_and_drop_data EXIT INT TERM
redis-cli -u "$REDIS_URL" flushdb >/dev/null

# The create workload's zip has one partner: partner 1 alone serves 99999 (the seed's zips are
# 00000-00999).
one_partner_zip() {  # NAME SOURCE_DIR
    serve_seeded "$1" 10000 2 "$2"
    psql -h 127.0.0.1 -U postgres -d "${DB_PREFIX}_$1_$$" -qc \
        "UPDATE partners SET serviceable_zip_codes = serviceable_zip_codes || '{99999}' WHERE email = 'partner1@example.com'"
    sed 's/"zip_code": "00020"/"zip_code": "99999"/' "$WORK/$1/create_body.json" >"$WORK/$1/one_zip_body.json"
}

one_partner_zip before "$(realpath "$1")"
one_partner_zip after "$(realpath "$2")"
echo "| round | tree | req/s | p50 | p99 | non-2xx, socket errors |"
echo "|---|---|---:|---:|---:|---|"
for round in $(seq "$ROUNDS"); do
    order="before after"
    if [ $((round % 2)) -eq 0 ]; then order="after before"; fi
    for name in $order; do
        dir="$WORK/$name"
        url="http://127.0.0.1:$(cat "$dir/port")"
        args=(-s bench/create.lua "$url" -- "$dir/seller_token" "$dir/one_zip_body.json")
        wrk -t2 -c"$CONNECTIONS" -d2s --timeout 10s "${args[@]}" >/dev/null
        wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --timeout 10s --latency "${args[@]}" >"$dir/run.txt"
        echo "| $round | $name | $(awk '/^Requests\/sec/ {print $2}' "$dir/run.txt")" \
            "| $(awk '$1=="50%" {print $2}' "$dir/run.txt") | $(awk '$1=="99%" {print $2}' "$dir/run.txt")" \
            "| $(grep -h 'Non-2xx\|Socket errors' "$dir/run.txt" | tr -s ' \n' ' ' || true) |"
    done
done
psql -h 127.0.0.1 -U postgres -d "${DB_PREFIX}_after_$$" -Atc \
    "SELECT 'partner 1 active shipments: ' || active_shipments FROM partners WHERE email = 'partner1@example.com'"
