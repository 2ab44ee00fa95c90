#!/usr/bin/env node
// Signs in and consents on the dev PDS's OAuth authorization page, in a real browser, the way a
// person would, and prints the URL the PDS redirects the browser to (the client's redirect_uri
// with code, state and iss, or with error=access_denied after --deny) WITHOUT following it.
//
//   consent.mjs [--deny] AUTHORIZATION_URL IDENTIFIER PASSWORD
//
// AUTHORIZATION_URL is what a client sends the person to after its PAR
// (`{authorization_endpoint}?client_id=...&request_uri=...`); IDENTIFIER is a handle or email,
// PASSWORD the account password (the page refuses app passwords). Output: one line on stdout.
// Exit status 1 with the page's own message on stderr if the page refuses (wrong password, an
// expired or unknown request_uri, ...). A fresh browser profile per run: no session is remembered.
//
// The browser is Debian's `chromium` (HERALD_CHROMIUM overrides the path), driven by
// playwright-core. The page is the PDS's real one: its React app, its cookies and CSRF token,
// its own API calls. Only its last step is intercepted: the PDS answers the page's final
// navigation (/oauth/authorize/redirect) with a 303 to the client, and this script reads that
// Location and stops the browser there (CDP Fetch interception at the response stage), so the
// caller decides what reaches its callback. run.sh's header says why a browser and not fetch().

import { chromium } from 'playwright-core'

const args = process.argv.slice(2)
const deny = args[0] === '--deny'
if (deny) args.shift()
const [authorizationUrl, identifier, password] = args
if (!authorizationUrl || !identifier || !password || args.length !== 3) {
  console.error('usage: consent.mjs [--deny] AUTHORIZATION_URL IDENTIFIER PASSWORD')
  process.exit(2)
}

const TIMEOUT_MS = Number(process.env.HERALD_CONSENT_TIMEOUT_MS ?? 60_000)
const issuer = new URL(authorizationUrl).origin

function fail(message) {
  console.error(`consent.mjs: ${message}`)
  process.exit(1)
}

const browser = await chromium
  .launch({
    executablePath: process.env.HERALD_CHROMIUM || '/usr/bin/chromium',
    // Chromium's sandbox needs user namespaces, which containers and root shells often lack.
    args: ['--no-sandbox'],
    timeout: TIMEOUT_MS,
  })
  .catch((err) =>
    fail(`cannot start chromium (apt-get install chromium, or set HERALD_CHROMIUM): ${err.message}`),
  )

let failure
try {
  const context = await browser.newContext({ locale: 'en-US' })
  context.setDefaultTimeout(TIMEOUT_MS)
  const page = await context.newPage()
  page.on('pageerror', (err) => console.error(`consent.mjs: page error: ${err.message}`))

  const { redirected } = await interceptClientRedirect(page)
  // If the PDS redirects at once, the aborted navigation loses this race to `redirected`.
  await Promise.race([page.goto(authorizationUrl), redirected])

  const visible = (locator) => locator.waitFor({ state: 'visible' })
  const passwordField = page.locator('input[name="password"]')
  const welcome = page.getByRole('button', { name: 'Create a new account', exact: true })
  const consent = page.getByRole('button', { name: deny ? 'Deny access' : 'Authorize', exact: true })
  // Any view may instead show an error, or the PDS may send the browser straight back to the
  // client (an invalid request, or nothing left to ask).
  const step = (views) =>
    Promise.race([redirected.then(() => 'redirect'), pageError(page), ...views])

  // Without a login_hint the page first offers "Create a new account" or "Sign in".
  let view = await step([
    visible(passwordField).then(() => 'sign-in'),
    visible(welcome).then(() => 'welcome'),
  ])
  if (view === 'welcome') {
    await page.getByRole('button', { name: 'Sign in', exact: true }).click()
    view = await step([visible(passwordField).then(() => 'sign-in')])
  }
  if (view === 'sign-in') {
    const username = page.locator('input[name="username"]')
    // With a login_hint the page fills the username in and makes it read-only.
    if (await username.isEditable()) await username.fill(identifier)
    await passwordField.fill(password)
    await page.getByRole('button', { name: 'Sign in', exact: true }).click()
    view = await step([visible(consent).then(() => 'consent')])
  }
  if (view === 'consent') await consent.click()
  console.log(await withTimeout(redirected, 'the PDS did not redirect back to the client'))
} catch (err) {
  failure = err.message
} finally {
  await browser.close()
}
if (failure) fail(failure)

// Stops the browser at the PDS's redirect to the client (a 303 from /oauth/authorize or
// /oauth/authorize/redirect); `redirected` resolves with that redirect's Location.
async function interceptClientRedirect(page) {
  const cdp = await page.context().newCDPSession(page)
  let resolve, reject
  const redirected = new Promise((resolve_, reject_) => {
    resolve = resolve_
    reject = reject_
  })
  cdp.on('Fetch.requestPaused', async ({ requestId, request, responseStatusCode, responseHeaders }) => {
    try {
      const location = responseHeaders?.find((h) => h.name.toLowerCase() === 'location')?.value
      const target = location && new URL(location, request.url)
      if (responseStatusCode >= 300 && responseStatusCode < 400 && target && target.origin !== issuer) {
        resolve(target.href)
        await cdp.send('Fetch.failRequest', { requestId, errorReason: 'Aborted' })
      } else {
        await cdp.send('Fetch.continueRequest', { requestId })
      }
    } catch (err) {
      reject(err)
    }
  })
  await cdp.send('Fetch.enable', {
    patterns: [{ urlPattern: `${issuer}/oauth/authorize*`, requestStage: 'Response' }],
  })
  // Wrapped: an async function returning the bare promise would wait for the redirect itself.
  return { redirected }
}

// Rejects with the page's own words when it shows an error (a notice, an error view), so a
// refusal fails fast instead of waiting for a button that never comes.
async function pageError(page) {
  const alert = page.locator('[role="alert"]').first()
  await alert.waitFor({ state: 'visible', timeout: TIMEOUT_MS })
  const text = (await alert.innerText()).trim().replace(/\s+/g, ' ')
  throw new Error(`the authorization page says: ${text}`)
}

function withTimeout(promise, message) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), TIMEOUT_MS)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
