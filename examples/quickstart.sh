#!/usr/bin/env bash
# Mintguard's main job on its embedded defaults: a broker with SQLite and a
# generated CA and keys (examples/broker/broker.toml, in a fresh directory),
# a node enrolled with a join token, a workload attested by uid, gid and the
# SHA-256 of its executable getting a JWT over mTLS and verifying it against
# the JWKS, then the issuance log and its verification.
#
# Until the agent binary lands, broker/examples/quickstart_node.rs plays the
# node (enrollment, mTLS) and the workload.
#
#   ./examples/quickstart.sh            # in a temp dir, removed afterwards
#   MINTGUARD_QUICKSTART_DIR=~/.local/share/mintguard-quickstart ./examples/quickstart.sh   # keep it
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -q -p mintguard-broker --bins --example quickstart_node
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
bin=$target
node_bin=$target/examples/quickstart_node

if [[ -n ${MINTGUARD_QUICKSTART_DIR:-} ]]; then
    work=$MINTGUARD_QUICKSTART_DIR
    rm -rf "$work"
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/mintguard-quickstart.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
cp -r examples/broker examples/policies examples/graphs "$work/"
config=$work/broker/broker.toml
data=$work/broker/data

"$bin/mintguard-broker" operator create quickstart --role admin --config "$config" >/dev/null
"$bin/mintguard-broker" run --config "$config" 2>"$work/broker.log" &
broker_pid=$!
trap 'kill $broker_pid 2>/dev/null; wait $broker_pid 2>/dev/null; [[ -n ${MINTGUARD_QUICKSTART_DIR:-} ]] || rm -rf "$work"' EXIT
for _ in $(seq 100); do
    [[ -s $data/listen.json ]] && break
    kill -0 $broker_pid 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
    sleep 0.1
done
[[ -s $data/listen.json ]] || { echo "the broker did not start:" >&2; cat "$work/broker.log" >&2; exit 1; }
echo "== broker: $(tail -1 "$work/broker.log")"

mg() { "$bin/mintguard" --data-dir "$data" "$@"; }
token=$(mg token create --node node-1 --ttl 5m | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
sha=$(sha256sum "$node_bin" | cut -d' ' -f1)
mg entry create --spiffe-id spiffe://example.org/ns/pay/sa/api --parent node-1 \
    --selector "unix:uid:$(id -u)" --selector "unix:sha256:$sha" --grant payments-token >/dev/null
echo "== registered spiffe://example.org/ns/pay/sa/api for uid $(id -u) running sha256 ${sha:0:16}…"

echo "== the node enrolls, the workload asks for a credential"
MINTGUARD_JOIN_TOKEN=$token "$node_bin" "$data"

echo "== the issuance log"
mg logs
echo "== mintguard logs verify"
mg logs verify
