#!/bin/sh
# Measure panelsrv as it is and with each prototype (cumulative: keepalive429 includes ipcache,
# lightpool includes both), same scenarios, no profiler attached; one line per run appended to
# bench/results/prototypes.txt. Usage: sh bench/prototypes/compare.sh [seconds]
set -e
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN=${1:-6}
OUT=bench/results/prototypes.txt
: > "$OUT"
for patch in "" ipcache keepalive429 lightpool; do
    .venv/bin/python -m bench.profile --quick --no-spy --seconds "$SECONDS_PER_RUN" \
        --scenarios services,balance,status,status100,mix,reject_ip \
        ${patch:+--patch "$patch"} --append "$OUT" > /dev/null
done
cat "$OUT"
