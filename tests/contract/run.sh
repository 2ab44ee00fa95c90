#!/usr/bin/env bash
# The API contract: schemathesis (PyPI) runs every check against /openapi.json of a running
# `herald serve`, on SQLite and on Postgres, with a fixed seed and time budget, and must report
# no failure. Then a client generated from the document (openapi-python-client) creates a
# connection, enqueues a share, lists and reads shares.
#
# Everything after the setup runs in a network namespace with only loopback (`unshare -n`): the
# fuzzer invents instance URLs, handles and image URLs, and neither Herald's API nor its workers
# may reach any real platform or any address off this machine. Postgres is therefore a throwaway
# cluster started inside the namespace (initdb/pg_ctl from /usr/lib/postgresql/*/bin, as user
# `postgres` when run as root).
#
# Runs as root (the Postgres cluster then runs as user `postgres`), as scripts/test does here.
# Without root it needs unprivileged user namespaces, and initdb refuses the mapped root: run
# `tests/contract/run.sh sqlite` there.
#
# Usage: tests/contract/run.sh [sqlite|postgres ...]   (both by default)
# Environment:
#   HERALD_CONTRACT_SECONDS  schemathesis's time budget per backend for the tenant routes (default
#                            50); the operator routes get half of it
#   HERALD_CONTRACT_VENV     where schemathesis and the client generator are installed
#                            (default ~/.cache/herald-contract-venv)
#   CARGO_TARGET_DIR         where `cargo build` puts the herald binary (default target/)
set -euo pipefail
cd "$(dirname "$0")/../.."
# The runs are SQLite and Postgres with the queue in the store; scripts/test exports REDIS_URL for
# the cargo tests, and no Redis is reachable inside the namespace.
unset REDIS_URL
root=$(pwd)
log() { printf '\033[1m[contract]\033[0m %s\n' "$*" >&2; }

budget=${HERALD_CONTRACT_SECONDS:-50}
venv=${HERALD_CONTRACT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/herald-contract-venv}
target=${CARGO_TARGET_DIR:-$root/target}
herald="$target/debug/herald"

if [ "${1:-}" != "--inside" ]; then
  backends=("${@:-sqlite postgres}")
  log "building herald"
  cargo build --quiet --bin herald
  if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/openapi-python-client" ]; then
    log "installing schemathesis and openapi-python-client into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'schemathesis>=4.3,<5' 'openapi-python-client>=0.21,<1'
  fi
  command -v unshare >/dev/null || { log "unshare (util-linux) is needed"; exit 1; }
  if [ "$(id -u)" = 0 ]; then ns=(unshare --net); else ns=(unshare --net --map-root-user); fi
  # shellcheck disable=SC2068
  exec "${ns[@]}" -- "$0" --inside ${backends[@]}
fi
shift

# --- inside the namespace: loopback only ---------------------------------------------------------
ip link set lo up 2>/dev/null || python3 - <<'EOF' || true
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ifr = struct.pack("16sH", b"lo", 0)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, ifr))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
EOF

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${pg_stop:-}" ]; then eval "$pg_stop" || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_postgres() {
  local bin port data
  bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n1)")
  port=$(free_port)
  data="$work/pg"
  run_pg() { if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && runuser -u postgres -- true 2>/dev/null; then runuser -u postgres -- "$@"; else "$@"; fi; }
  mkdir -p "$data" && { chown postgres "$work" "$data" 2>/dev/null || true; }
  run_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  run_pg "$bin/pg_ctl" -D "$data" -l "$work/pg.log" -w start \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" >/dev/null
  pg_stop="run_pg '$bin/pg_ctl' -D '$data' -m immediate stop >/dev/null 2>&1"
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

# Starts `herald serve` on $1 and sets base, key, op_key and conn.
start_herald() {
  local db=$1 port
  port=$(free_port)
  base="http://127.0.0.1:$port"
  DATABASE_URL=$db HERALD_LISTEN=127.0.0.1:$port HERALD_ENCRYPTION_KEYS=$("$herald" keys generate) \
    HERALD_PUBLIC_URL=$base RUST_LOG=warn "$herald" serve >"$work/herald-$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do curl -fs "$base/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "$base/readyz" >/dev/null || { cat "$work/herald-$port.log" >&2; exit 1; }
  key=$(DATABASE_URL=$db "$herald" keys create --tenant contract 2>/dev/null)
  op_key=$(DATABASE_URL=$db "$herald" keys create --operator 2>/dev/null)
  conn=$(curl -fs "$base/v1/connections" -H "authorization: Bearer $key" -H 'content-type: application/json' \
    -d '{"platform":"mastodon","platform_account_id":"109","handle":"alice@mastodon.example","access_token":"t","extras":{"instance_url":"https://mastodon.example"}}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  herald_log="$work/herald-$port.log"
}

schemathesis() {
  local name=$1 budget=$2; shift 2
  log "$name: schemathesis, every check, ${budget}s"
  "$venv/bin/schemathesis" --config-file "$root/tests/contract/schemathesis.toml" run "$base/openapi.json" \
    --checks all \
    --max-time "$budget" \
    --seed 1 \
    --workers 1 \
    --request-timeout 10 \
    --max-failures 50 \
    --suppress-health-check all \
    --report junit --report-dir "$work/report-$name" \
    "$@"
}

generated_client() {
  log "$1: a client generated from /openapi.json"
  curl -fs "$base/openapi.json" -o "$work/openapi.json"
  # No post-hooks (they would want ruff); any warning about the document fails the run.
  echo '{"post_hooks": []}' >"$work/generator.json"
  (cd "$work" && "$venv/bin/openapi-python-client" generate --path openapi.json --output-path client \
    --overwrite --fail-on-warning --config generator.json >/dev/null)
  # A key of its own: the operator run may have revoked the one the fuzzer used (DELETE
  # /v1/keys/{id} with the ids GET /v1/keys lists).
  local client_key
  client_key=$(DATABASE_URL=$db "$herald" keys create --tenant contract 2>/dev/null)
  PYTHONPATH="$work/client" HERALD_BASE=$base HERALD_KEY=$client_key "$venv/bin/python" "$root/tests/contract/client.py"
}

failed=0
for backend in "$@"; do
  case $backend in
    sqlite) db="sqlite:$work/herald-contract.db" ;;
    postgres) db=$(start_postgres) ;;
    *) log "unknown backend $backend"; exit 2 ;;
  esac
  start_herald "$db"
  # Tenant routes with a tenant key; the operator routes (tag `operators`) with an operator key.
  schemathesis "$backend-tenant" "$budget" -H "Authorization: Bearer $key" --exclude-tag operators || failed=1
  schemathesis "$backend-operator" $((budget / 2)) -H "Authorization: Bearer $op_key" --include-tag operators || failed=1
  generated_client "$backend" || failed=1
  if grep -q "panicked" "$herald_log"; then log "$backend: herald panicked"; grep -m5 panicked "$herald_log" >&2; failed=1; fi
done
[ "$failed" = 0 ] && log "no failures" || { log "FAILED"; exit 1; }
