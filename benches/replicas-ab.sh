#!/bin/bash
# One broker against two on one PostgreSQL, for two builds of the load
# generator side by side (e.g. before and after a change to the store),
# with every commit delayed (commit_delay, as a synchronous standby a short
# hop away would), in interleaved rounds on fresh databases. Run under
# tests/peers.sh:
#
#   tests/peers.sh benches/replicas-ab.sh OLD/loadgen NEW/loadgen
#
# DELAY (µs, default 2000), ROUNDS (3), REQUESTS (6000), CLIENTS (32).
set -euo pipefail
[[ $# -eq 2 ]] || { echo "usage: $0 LOADGEN_A LOADGEN_B" >&2; exit 2; }
: "${MINTGUARD_PG_URL:?run under tests/peers.sh}"
base=${MINTGUARD_PG_URL%/*}
sql() { psql -q "$MINTGUARD_PG_URL" "$@" >/dev/null; }
sql -c "ALTER SYSTEM SET commit_delay = ${DELAY:-2000}" -c "ALTER SYSTEM SET commit_siblings = 0" -c "SELECT pg_reload_conf()"
trap 'sql -c "ALTER SYSTEM RESET commit_delay" -c "ALTER SYSTEM RESET commit_siblings" -c "SELECT pg_reload_conf()"' EXIT
for round in $(seq "${ROUNDS:-3}"); do
  for which in a b; do
    bin=$1; [[ $which == b ]] && bin=$2
    for n in 1 2; do
      db="mg_ab_${which}_${n}_${round}_$$"
      sql -c "CREATE DATABASE $db"
      line=$("$bin" --store "$base/$db" --replicas "$n" --clients "${CLIENTS:-32}" --requests "${REQUESTS:-6000}" 2>&1 | grep "requests in" | tail -1)
      echo "round $round $which replicas=$n: ${line#*: }"
    done
  done
done
