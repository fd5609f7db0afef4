#!/usr/bin/env bash
# Mintguard's main job on its embedded defaults.
#
# Today this runs the pipeline in one process (broker/examples/quickstart.rs):
# CA, broker and node SVIDs, node enrollment from a CSR, a real mTLS handshake,
# the workload's ECI from examples/graphs, a decision under examples/policies,
# and the workload JWT it allows with its JWKS. When the broker and agent
# binaries land, this script starts them and has a workload fetch a credential
# over the agent's socket, showing the issuance log.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run -q -p mintguard-broker --example quickstart
