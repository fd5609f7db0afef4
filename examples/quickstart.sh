#!/usr/bin/env bash
# Mintguard's main job on its embedded defaults: a broker with SQLite and a
# generated CA and keys (examples/broker/broker.toml, in a fresh directory),
# the node agent enrolled with a join token (examples/agent/agent.toml), a
# workload attested by the agent from the kernel (uid, gid, the SHA-256 of its
# executable) getting a JWT over the agent's Unix socket and verifying it
# against the broker's JWKS, then the issuance log and its verification.
#
# Then it suspends the identity and the same workload is refused, with the
# reasons, before it is resumed: Mintguard decides, it does not only mint.
#
#   ./examples/quickstart.sh            # in a temp dir, removed afterwards
#   ./examples/quickstart.sh --serve    # then keep the broker up, with the console's URL, until Ctrl-C
#   MINTGUARD_QUICKSTART_DIR=~/.local/share/mintguard-quickstart ./examples/quickstart.sh   # keep it
set -euo pipefail
serve=
case ${1:-} in
    --serve) serve=1 ;;
    "") ;;
    *) echo "usage: $0 [--serve]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

cargo build -q -p mintguard-broker --bins
cargo build -q -p mintguard-agent --bins --example workload
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
bin=$target
workload_bin=$target/examples/workload

if [[ -n ${MINTGUARD_QUICKSTART_DIR:-} ]]; then
    work=$MINTGUARD_QUICKSTART_DIR
    rm -rf "$work"
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/mintguard-quickstart.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi
cp -r examples/broker examples/agent examples/policies examples/graphs "$work/"
config=$work/broker/broker.toml
data=$work/broker/data

"$bin/mintguard-broker" operator create quickstart --role admin --config "$config" >/dev/null
"$bin/mintguard-broker" run --config "$config" 2>"$work/broker.log" &
broker_pid=$!
agent_pid=
trap 'kill $agent_pid $broker_pid 2>/dev/null; wait $agent_pid $broker_pid 2>/dev/null; [[ -n ${MINTGUARD_QUICKSTART_DIR:-} ]] || rm -rf "$work"' EXIT
for _ in $(seq 100); do
    [[ -s $data/listen.json ]] && break
    kill -0 $broker_pid 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
    sleep 0.1
done
[[ -s $data/listen.json ]] || { echo "the broker did not start:" >&2; cat "$work/broker.log" >&2; exit 1; }
echo "== broker: $(tail -1 "$work/broker.log")"

mg() { "$bin/mintguard" --data-dir "$data" "$@"; }
token=$(mg token create --node node-1 --ttl 5m | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
sha=$(sha256sum "$workload_bin" | cut -d' ' -f1)
mg entry create --spiffe-id spiffe://example.org/ns/pay/sa/api --parent node-1 \
    --selector "unix:uid:$(id -u)" --selector "unix:sha256:$sha" --grant payments-token >/dev/null
echo "== registered spiffe://example.org/ns/pay/sa/api for uid $(id -u) running sha256 ${sha:0:16}…"

echo "== the agent enrolls node-1 with its join token (read from the environment, never argv)"
python3 - "$data/listen.json" "$work/agent/agent.toml" <<'PY'
import json, sys
listen = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
text = text.replace("BROKER_PUBLIC", listen["public"]).replace("BROKER_AGENTS", listen["agents"])
open(sys.argv[2], "w").write(text)
PY
MINTGUARD_JOIN_TOKEN=$token "$bin/mintguard-agent" run --config "$work/agent/agent.toml" 2>"$work/agent.log" &
agent_pid=$!
socket=$work/agent/agent.sock
for _ in $(seq 100); do
    [[ -S $socket ]] && grep -q "serving workloads" "$work/agent.log" && break
    kill -0 $agent_pid 2>/dev/null || { cat "$work/agent.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "serving workloads" "$work/agent.log" || { echo "the agent did not start:" >&2; cat "$work/agent.log" >&2; exit 1; }
echo "== agent: $(grep -o 'node=[^ ]*' "$work/agent.log" | tail -1), socket $socket"

echo "== the workload asks the agent for a credential"
"$workload_bin" "$socket" "$data"

echo "== suspended: the same workload is refused, and why"
mg suspend spiffe://example.org/ns/pay/sa/api --reason "quickstart: a compromised-host drill" >/dev/null
if refusal=$(RUST_BACKTRACE=0 "$workload_bin" "$socket" "$data" 2>&1); then
    echo "a suspended identity got a credential" >&2
    exit 1
fi
echo "$refusal"
mg resume spiffe://example.org/ns/pay/sa/api >/dev/null
echo "== resumed"

echo "== the issuance log"
mg logs
echo "== mintguard logs verify"
mg logs verify

if [[ -n $serve ]]; then
    admin=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' "$data/listen.json")
    echo "== the operator console: https://$admin/ui/"
    echo "   sign in with the token in $data/operators/quickstart.token (an admin)"
    echo "   the listener's certificate is signed by $data/bundle.pem: trust it, or for a look run"
    echo "   chromium --ignore-certificate-errors-spki-list=\$(openssl s_client -connect $admin </dev/null 2>/dev/null | openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64)"
    echo "== serving until Ctrl-C"
    wait $broker_pid
fi
