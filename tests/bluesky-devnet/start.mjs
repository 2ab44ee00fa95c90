// Starts the real Bluesky development network (PLC + PDS + AppView, from @atproto/dev-env) on
// 127.0.0.1, creates the accounts jobs/tests/bluesky_devnet.rs uses, prints ONE JSON line on
// stdout, and stays up until stdin closes or SIGTERM/SIGINT arrives.
//
// Needs Node 22 and, in the environment, DB_POSTGRES_URL (a throwaway database) and REDIS_HOST
// (host:port of a throwaway redis-server); run.sh provides all three. Everything the network logs
// goes to stderr so stdout carries only the JSON line.

import net from 'node:net'

// dev-env's servers call listen(port) and would bind every interface; pin them to loopback.
const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1')
  } else if (args[0] && typeof args[0] === 'object' && args[0].port !== undefined && !args[0].host) {
    args[0] = { ...args[0], host: '127.0.0.1' }
  }
  return listen.apply(this, args)
}

// A confidential OAuth client's `client_id` must be an https URL on a DNS name (never an IP, never
// http, whatever the PDS's dev mode: @atproto/oauth-types), and its redirect URIs https on a
// non-local name. A test's client (Herald's API) listens on http://127.0.0.1:PORT. So every fetch
// this process makes to https://loopback-PORT.devnet.internal/... goes to http://localhost:PORT/...
// instead: the PDS fetches the client metadata and JWKS through here (its SSRF-safe fetch calls
// globalThis.fetch at call time), and all of its checks of the client_id and the metadata still
// run on the https URL. `localhost`, not 127.0.0.1: the PDS refuses IP hosts even in dev mode.
const LOOPBACK_HOST = /^loopback-(\d{1,5})\.devnet\.internal$/
const realFetch = globalThis.fetch
globalThis.fetch = function (input, init) {
  const url = new URL(input instanceof Request ? input.url : String(input))
  const port = url.protocol === 'https:' && LOOPBACK_HOST.exec(url.hostname)?.[1]
  if (port) {
    const target = `http://localhost:${port}${url.pathname}${url.search}`
    input = input instanceof Request ? new Request(target, input) : target
  }
  return realFetch.call(this, input, init)
}

// Keep stdout for the JSON line: the network's own chatter goes to stderr.
const print = console.log.bind(console)
console.log = console.error
console.info = console.error

const { TestNetwork } = await import('@atproto/dev-env')

for (const name of ['DB_POSTGRES_URL', 'REDIS_HOST']) {
  if (!process.env[name]) {
    console.error(`start.mjs: ${name} is not set (run run.sh)`)
    process.exit(2)
  }
}

const started = Date.now()
const network = await TestNetwork.create({
  // A fresh cluster per run, so a fixed schema name is enough (only [A-Za-z_] is allowed).
  dbPostgresSchema: 'herald',
})

const pdsUrl = `http://127.0.0.1:${network.pds.port}`

async function xrpc(nsid, body, token) {
  const res = await fetch(`${pdsUrl}/xrpc/${nsid}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify(body),
  })
  const json = await res.json()
  if (!res.ok) throw new Error(`${nsid}: ${res.status} ${JSON.stringify(json)}`)
  return json
}

async function account(name) {
  const password = `${name}-account-password`
  const created = await xrpc('com.atproto.server.createAccount', {
    email: `${name}@herald.test`,
    handle: `${name}.test`,
    password,
  })
  return { did: created.did, handle: created.handle, password, accessJwt: created.accessJwt }
}

const alice = await account('alice')
const bob = await account('bob')
// Herald connects with an app password, never the account password.
const appPassword = await xrpc('com.atproto.server.createAppPassword', { name: 'herald' }, alice.accessJwt)
await network.processAll()

print(
  JSON.stringify({
    pds_url: pdsUrl,
    // The PDS is its own OAuth authorization server; its issuer is its public URL, which
    // dev-env makes http://localhost:PORT (also the PDS endpoint in every DID document here).
    pds_issuer: network.pds.ctx.cfg.oauth.issuer,
    appview_url: `http://127.0.0.1:${network.bsky.port}`,
    plc_url: `http://127.0.0.1:${network.plc.port}`,
    // What a confidential OAuth client on 127.0.0.1:{port} uses as its public https origin
    // (client_id, jwks_uri, redirect_uris); see LOOPBACK_HOST above.
    loopback_public_url: 'https://loopback-{port}.devnet.internal',
    alice_did: alice.did,
    alice_handle: alice.handle,
    // The account password: the PDS's OAuth sign-in page refuses app passwords.
    alice_password: alice.password,
    alice_app_password: appPassword.password,
    bob_did: bob.did,
    bob_handle: bob.handle,
    bob_password: bob.password,
    started_ms: Date.now() - started,
  }),
)

let closing = false
async function shutdown(why) {
  if (closing) return
  closing = true
  console.error(`start.mjs: shutting down (${why})`)
  const force = setTimeout(() => process.exit(0), 10_000)
  force.unref()
  try {
    await network.close()
  } catch (err) {
    console.error('start.mjs: close failed', err)
  }
  process.exit(0)
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
process.stdin.on('end', () => shutdown('stdin closed'))
process.stdin.on('close', () => shutdown('stdin closed'))
process.stdin.resume()
