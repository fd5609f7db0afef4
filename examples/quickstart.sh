#!/usr/bin/env bash
# Mintguard's main job on its embedded defaults.
#
# Today this runs the identity foundation end to end (CA, broker and node SVIDs,
# node enrollment from a CSR, a real mTLS handshake, a signed workload JWT and
# its JWKS). When the broker and agent binaries land, this script starts them
# and has a workload fetch a credential, showing the issuance log.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run -q -p mintguard-certs --example quickstart
