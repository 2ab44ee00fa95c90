#!/usr/bin/env node
// Proves consent.mjs, and the OAuth facts Herald's client relies on, against the running dev
// network: a real PAR (PKCE S256, DPoP with the server's nonce, login_hint), the authorization
// page driven by consent.mjs, the code exchanged for DPoP-bound tokens, a PDS call with them, a
// refresh, and a replayed refresh token killing the session. Twice: as a loopback development
// client (public, `http://localhost?...`) and as a confidential `private_key_jwt` client whose
// metadata and JWKS this script serves on 127.0.0.1 behind start.mjs's `loopback_public_url`.
// Then once more with --deny. Run by `run.sh --check-consent`; it reads HERALD_BLUESKY_DEVNET and
// HERALD_BLUESKY_CONSENT like the Rust tests. Hand-written with `jose` on purpose: each request
// is visible here as the provider sees it.

import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import http from 'node:http'
import { promisify } from 'node:util'
import { SignJWT, exportJWK, generateKeyPair } from 'jose'

const net = JSON.parse(
  process.env.HERALD_BLUESKY_DEVNET ?? fail('HERALD_BLUESKY_DEVNET is not set (run run.sh --check-consent)'),
)
const driver = process.env.HERALD_BLUESKY_CONSENT ?? fail('HERALD_BLUESKY_CONSENT is not set')
const SCOPE = 'atproto transition:generic'
const b64url = (bytes) => Buffer.from(bytes).toString('base64url')

function fail(message) {
  console.error(`oauth-check: ${message}`)
  process.exit(1)
}

function step(message) {
  console.error(`oauth-check: ${message}`)
}

// --- discovery, as a client does it from the account's PDS ----------------------------------
const didDoc = await getJson(`${net.plc_url}/${net.alice_did}`)
const pds = didDoc.service.find((s) => s.id === '#atproto_pds').serviceEndpoint
const resource = await getJson(`${pds}/.well-known/oauth-protected-resource`)
const issuer = resource.authorization_servers[0]
const as = await getJson(`${issuer}/.well-known/oauth-authorization-server`)
assert.equal(as.issuer, issuer)
assert.equal(issuer, net.pds_issuer)
step(`PDS ${pds}, issuer ${issuer}`)

async function getJson(url) {
  const res = await fetch(url, { headers: { accept: 'application/json' } })
  if (!res.ok) fail(`GET ${url}: ${res.status} ${await res.text()}`)
  return res.json()
}

// --- DPoP: one key per session, the server's nonce remembered per origin --------------------
class Dpop {
  nonces = new Map()

  static async create() {
    const { privateKey, publicKey } = await generateKeyPair('ES256')
    return Object.assign(new Dpop(), { privateKey, jwk: await exportJWK(publicKey) })
  }

  proof(htm, url, accessToken) {
    const { origin, pathname } = new URL(url)
    const nonce = this.nonces.get(origin)
    const ath = accessToken && b64url(createHash('sha256').update(accessToken).digest())
    const claims = { htm, htu: origin + pathname, jti: randomUUID(), ...(nonce && { nonce }), ...(ath && { ath }) }
    return new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: this.jwk })
      .setIssuedAt()
      .sign(this.privateKey)
  }

  // `request()` builds the request anew for each attempt (a client assertion is single-use).
  async fetch(method, url, request, accessToken) {
    for (let attempt = 0; ; attempt++) {
      const { headers = {}, body } = await request()
      const res = await fetch(url, {
        method,
        body,
        headers: {
          ...headers,
          dpop: await this.proof(method, url, accessToken),
          ...(accessToken && { authorization: `DPoP ${accessToken}` }),
        },
      })
      const nonce = res.headers.get('dpop-nonce')
      if (nonce) this.nonces.set(new URL(url).origin, nonce)
      const text = await res.text()
      // The authorization server says so in a 400 body, the PDS in a 401's WWW-Authenticate.
      const wantsNonce =
        (res.status === 400 && text.includes('"use_dpop_nonce"')) ||
        (res.status === 401 && /error="use_dpop_nonce"/.test(res.headers.get('www-authenticate') ?? ''))
      if (wantsNonce && attempt === 0) {
        step(`${method} ${new URL(url).pathname}: ${res.status} use_dpop_nonce, again with the nonce`)
        continue
      }
      return { status: res.status, json: text ? JSON.parse(text) : undefined }
    }
  }
}

// --- the two kinds of client ------------------------------------------------------------------
function loopbackClient() {
  const redirectUri = 'http://127.0.0.1/callback'
  const clientId = `http://localhost?${new URLSearchParams({ redirect_uri: redirectUri, scope: SCOPE })}`
  return { clientId, redirectUri, auth: async () => ({}), close() {} }
}

async function confidentialClient() {
  const { privateKey, publicKey } = await generateKeyPair('ES256')
  const kid = `herald-check-${randomUUID()}`
  const jwks = { keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' }] }
  const fetched = []
  const server = http.createServer((req, res) => {
    fetched.push(req.url)
    const body = { '/client-metadata.json': metadata, '/jwks.json': jwks }[req.url]
    res.writeHead(body ? 200 : 404, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body ?? {}))
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const base = net.loopback_public_url.replace('{port}', server.address().port)
  const clientId = `${base}/client-metadata.json`
  const redirectUri = `${base}/callback`
  const metadata = {
    client_id: clientId,
    client_name: 'Herald devnet check',
    application_type: 'web',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    scope: SCOPE,
    redirect_uris: [redirectUri],
    dpop_bound_access_tokens: true,
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks_uri: `${base}/jwks.json`,
  }
  // A fresh assertion per request: its jti is single-use, it lives 60 s at most, aud = issuer.
  const auth = async () => ({
    client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
    client_assertion: await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid })
      .setIssuer(clientId)
      .setSubject(clientId)
      .setAudience(issuer)
      .setJti(randomUUID())
      .setIssuedAt()
      .setExpirationTime('60s')
      .sign(privateKey),
  })
  return { clientId, redirectUri, auth, fetched, close: () => server.close() }
}

// --- one authorization, start to finish -------------------------------------------------------
async function authorize(client, { deny = false } = {}) {
  const dpop = await Dpop.create()
  const verifier = b64url(randomBytes(32))
  const state = b64url(randomBytes(16))
  const par = await dpop.fetch('POST', as.pushed_authorization_request_endpoint, async () => ({
    body: new URLSearchParams({
      client_id: client.clientId,
      response_type: 'code',
      redirect_uri: client.redirectUri,
      scope: SCOPE,
      state,
      code_challenge: b64url(createHash('sha256').update(verifier).digest()),
      code_challenge_method: 'S256',
      login_hint: net.alice_handle,
      ...(await client.auth()),
    }),
  }))
  assert.equal(par.status, 201, `PAR: ${JSON.stringify(par.json)}`)
  const url = new URL(as.authorization_endpoint)
  url.search = new URLSearchParams({ client_id: client.clientId, request_uri: par.json.request_uri })

  const started = Date.now()
  const args = [...(deny ? ['--deny'] : []), url.href, net.alice_handle, net.alice_password]
  const { stdout } = await promisify(execFile)(driver, args).catch((err) =>
    fail(`consent.mjs: ${err.stderr || err.message}`),
  )
  const callback = new URL(stdout.trim())
  const keys = [...callback.searchParams.keys()]
  step(`consent.mjs answered in ${Date.now() - started} ms: ${callback.origin}${callback.pathname}?${keys}`)
  assert.equal(callback.origin + callback.pathname, client.redirectUri)
  assert.equal(callback.searchParams.get('state'), state)
  assert.equal(callback.searchParams.get('iss'), issuer)
  if (deny) {
    assert.equal(callback.searchParams.get('error'), 'access_denied')
    return
  }

  const token = await dpop.fetch('POST', as.token_endpoint, async () => ({
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      client_id: client.clientId,
      redirect_uri: client.redirectUri,
      code: callback.searchParams.get('code'),
      code_verifier: verifier,
      ...(await client.auth()),
    }),
  }))
  assert.equal(token.status, 200, `token: ${JSON.stringify(token.json)}`)
  assert.equal(token.json.token_type, 'DPoP')
  assert.equal(token.json.sub, net.alice_did)
  assert.deepEqual(token.json.scope.split(' ').sort(), SCOPE.split(' ').sort())
  assert.ok(token.json.refresh_token && token.json.expires_in > 0)
  step(`tokens for ${token.json.sub}, scope "${token.json.scope}", expires_in ${token.json.expires_in}`)

  // The PDS takes the access token with a DPoP proof carrying `ath` and its own nonce.
  const getSession = `${pds}/xrpc/com.atproto.server.getSession`
  const session = await dpop.fetch('GET', getSession, async () => ({}), token.json.access_token)
  assert.equal(session.status, 200, `getSession: ${JSON.stringify(session.json)}`)
  assert.equal(session.json.did, net.alice_did)
  return { dpop, token: token.json }
}

async function refresh(client, dpop, refreshToken) {
  return dpop.fetch('POST', as.token_endpoint, async () => ({
    body: new URLSearchParams({
      grant_type: 'refresh_token',
      client_id: client.clientId,
      refresh_token: refreshToken,
      ...(await client.auth()),
    }),
  }))
}

step('loopback development client')
const loopback = loopbackClient()
await authorize(loopback)

step('confidential private_key_jwt client')
const confidential = await confidentialClient()
const { dpop, token } = await authorize(confidential)
// The PDS fetched both through start.mjs's loopback_public_url mapping.
assert.ok(confidential.fetched.includes('/client-metadata.json'))
assert.ok(confidential.fetched.includes('/jwks.json'))
const rotated = await refresh(confidential, dpop, token.refresh_token)
assert.equal(rotated.status, 200, `refresh: ${JSON.stringify(rotated.json)}`)
assert.notEqual(rotated.json.refresh_token, token.refresh_token)
const replayed = await refresh(confidential, dpop, token.refresh_token)
assert.equal(replayed.status, 400)
assert.equal(replayed.json.error, 'invalid_grant')
step(`replayed refresh token: ${replayed.json.error} "${replayed.json.error_description}"`)
const afterReplay = await refresh(confidential, dpop, rotated.json.refresh_token)
assert.equal(afterReplay.json.error, 'invalid_grant', 'a replay ends the whole session')
confidential.close()

step('--deny')
await authorize(loopback, { deny: true })
step('all good')
