#!/usr/bin/env bash
# A local trial of Mintguard HA: a PostgreSQL on loopback and two brokers on
# it, sharing the CA and JWT key directories and the log-signing key file.
# Runs until Ctrl-C, then stops everything it started.
#
#   deploy/ha/run-local.sh [WORKDIR]
#
# Needs PostgreSQL's server binaries (apt install postgresql; set PG_BIN if
# they are not under /usr/lib/postgresql/*/bin) and runs them as the
# `postgres` user when started as root.
set -euo pipefail
cd "$(dirname "$0")/../.."

WORK=${1:-$(mktemp -d /tmp/mintguard-ha.XXXXXX)}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[[ -x ${PG_BIN:-}/initdb ]] || { echo "no PostgreSQL server binaries (apt install postgresql, or set PG_BIN)" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cargo build --release -q -p mintguard-broker
BROKER=$PWD/target/release/mintguard-broker
CLI=$PWD/target/release/mintguard

mkdir -p "$WORK"/{pg,pgsock,shared,a,b}
[[ $(id -u) == 0 ]] && chown postgres:postgres "$WORK/pg" "$WORK/pgsock"
chmod 700 "$WORK/pg" "$WORK/shared"
PG_PORT=$(free_port)
PASS=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
printf '%s\n' "$PASS" >"$WORK/pwfile"
[[ $(id -u) == 0 ]] && chown postgres "$WORK/pwfile"
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth-host=scram-sha-256 --auth-local=trust \
    --pwfile="$WORK/pwfile" -E UTF8 >/dev/null
rm -f "$WORK/pwfile"
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pgsock/pg.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $WORK/pgsock" start >/dev/null
STORE="postgres://postgres:$PASS@127.0.0.1:$PG_PORT/postgres"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

for replica in a b; do
    cat >"$WORK/$replica/broker.toml" <<EOF
trust_domain = "example.org"
data_dir = "data"
issuer_url = "https://mintguard.example.org"
store = "$STORE"
[listen]
public = "127.0.0.1:$(free_port)"
agents = "127.0.0.1:$(free_port)"
admin = "127.0.0.1:$(free_port)"
[ca]
dir = "$WORK/shared/ca"
[jwt]
dir = "$WORK/shared/jwt"
[log]
signing_key = "$WORK/shared/log-signing.key"
checkpoints_file = "data/checkpoints.jsonl"
[policies]
cedar = "$PWD/examples/policies"
[[grants]]
name = "payments-token"
kind = "jwt"
max_ttl = "15m"
jwt = { audience = "payments" }
budget = { amount = 100, per = "1h" }
EOF
    "$BROKER" operator create alice --role admin --config "$WORK/$replica/broker.toml" >/dev/null
done

# A first, so it creates the shared CA, JWT keys and log-signing key; then B.
"$BROKER" run --config "$WORK/a/broker.toml" >"$WORK/a/broker.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $WORK/a/data/listen.json ]] && break; sleep 0.1; done
"$BROKER" run --config "$WORK/b/broker.toml" >"$WORK/b/broker.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [[ -s $WORK/b/data/listen.json ]] && break; sleep 0.1; done

echo "PostgreSQL: $STORE"
for replica in a b; do
    echo "broker $replica: $(cat "$WORK/$replica/data/listen.json")"
    echo "  $CLI --data-dir $WORK/$replica/data logs"
done
echo "A suspension through A is enforced by B; one log, one chain:"
"$CLI" --data-dir "$WORK/a/data" suspend spiffe://example.org/ns/demo/sa/x --reason trial >/dev/null
"$CLI" --data-dir "$WORK/b/data" logs --outcome suspended
echo "Ctrl-C stops both brokers and PostgreSQL (state stays in $WORK)."
wait
