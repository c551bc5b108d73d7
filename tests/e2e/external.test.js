// Sign-in with an external OpenID Connect provider through the real
// supabase-js client, against a real provider (oidc-provider.mjs, which
// run.sh started and configured as the `keycloak` provider of the instance
// at E2E_OIDC_SOVRA_URL): signInWithOAuth in PKCE mode with the redirects
// followed here, exchangeCodeForSession, signInWithIdToken with a token
// the provider issued, and the refusals.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.E2E_OIDC_SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const oidc = process.env.E2E_OIDC_URL;
const clientId = process.env.E2E_OIDC_CLIENT_ID;
const clientSecret = process.env.E2E_OIDC_CLIENT_SECRET;
const nativeRedirect = process.env.E2E_OIDC_NATIVE_REDIRECT;

// An in-memory storage, so that auth-js keeps its PKCE verifier.
function memoryStorage() {
  const items = new Map();
  return {
    getItem: (k) => items.get(k) ?? null,
    setItem: (k, v) => { items.set(k, v); },
    removeItem: (k) => { items.delete(k); },
  };
}
const pkceClient = () => createClient(url, anonKey, {
  auth: { flowType: 'pkce', persistSession: true, autoRefreshToken: false, detectSessionInUrl: false, storage: memoryStorage() },
  realtime: { transport: ws },
});

// Follows redirects from `start` as a browser would (cookies per name,
// which is all oidc-provider needs here) until one leads to `stop` (a URL
// prefix, or a predicate).
async function follow(start, stop) {
  const done = typeof stop === 'function' ? stop : (u) => u.startsWith(stop);
  const jar = new Map();
  let next = start;
  for (let hop = 0; hop < 20; hop++) {
    if (hop > 0 && done(next)) return next;
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const r = await fetch(next, { redirect: 'manual', headers: cookie ? { cookie } : {} });
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const at = pair.indexOf('=');
      jar.set(pair.slice(0, at), pair.slice(at + 1));
    }
    const location = r.headers.get('location');
    assert.ok(location, `no redirect from ${next}: ${r.status} ${await r.text()}`);
    next = new URL(location, next).toString();
  }
  throw new Error(`too many redirects from ${start}`);
}

test('signInWithOAuth (PKCE) through a real OpenID Connect provider', async () => {
  const supabase = pkceClient();
  const redirectTo = `${url}/welcome`;
  const { data, error } = await supabase.auth.signInWithOAuth({
    provider: 'keycloak',
    options: { redirectTo, skipBrowserRedirect: true, scopes: 'email' },
  });
  assert.equal(error, null);
  assert.ok(data.url.startsWith(`${url}/auth/v1/authorize?provider=keycloak`), data.url);
  const back = await follow(data.url, redirectTo);
  const code = new URL(back).searchParams.get('code');
  assert.ok(code, back);
  const { data: exchanged, error: exchangeError } = await supabase.auth.exchangeCodeForSession(code);
  assert.equal(exchangeError, null);
  const { session, user } = exchanged;
  assert.equal(user.email, 'oidc-ada@example.com');
  assert.equal(user.app_metadata.provider, 'keycloak');
  assert.equal(user.user_metadata.full_name, 'Ada From OIDC');
  assert.ok(user.identities.some((i) => i.provider === 'keycloak' && i.identity_data.sub === 'oidc-ada'));
  assert.ok(session.provider_token, 'the provider access token is handed over');
  assert.ok(session.provider_refresh_token, 'and its refresh token');
  // The provider's access token works at its userinfo endpoint.
  const info = await fetch(`${oidc}/me`, { headers: { authorization: `Bearer ${session.provider_token}` } });
  assert.equal(info.status, 200);
  assert.equal((await info.json()).sub, 'oidc-ada');
  // The session is Sovra's.
  const { data: me } = await supabase.auth.getUser();
  assert.equal(me.user.id, user.id);

  // A second sign-in finds the same user; the code cannot be used twice.
  const again = pkceClient();
  const { data: second } = await again.auth.signInWithOAuth({ provider: 'keycloak', options: { redirectTo, skipBrowserRedirect: true } });
  const code2 = new URL(await follow(second.url, redirectTo)).searchParams.get('code');
  const { data: s2, error: e2 } = await again.auth.exchangeCodeForSession(code2);
  assert.equal(e2, null);
  assert.equal(s2.user.id, user.id);
  const { error: reused } = await again.auth.exchangeCodeForSession(code2);
  assert.ok(reused, 'an auth code works once');
});

test('signInWithOAuth in the implicit flow lands with the session in the fragment', async () => {
  const supabase = createClient(url, anonKey, {
    auth: { flowType: 'implicit', persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: { transport: ws },
  });
  const redirectTo = `${url}/implicit`;
  const { data } = await supabase.auth.signInWithOAuth({ provider: 'keycloak', options: { redirectTo, skipBrowserRedirect: true } });
  const landed = new URL(await follow(data.url, redirectTo));
  const fragment = new URLSearchParams(landed.hash.slice(1));
  assert.equal(fragment.get('token_type'), 'bearer');
  assert.ok(fragment.get('provider_token'));
  const { data: set, error } = await supabase.auth.setSession({
    access_token: fragment.get('access_token'), refresh_token: fragment.get('refresh_token'),
  });
  assert.equal(error, null);
  assert.equal(set.user.email, 'oidc-ada@example.com');
});

test('the callback refuses states it did not sign, used twice, or expired', async () => {
  const supabase = pkceClient();
  const redirectTo = `${url}/welcome`;
  const { data } = await supabase.auth.signInWithOAuth({ provider: 'keycloak', options: { redirectTo, skipBrowserRedirect: true } });
  // Stop at Sovra's callback, keep what the provider sent.
  const callback = await follow(data.url, `${url}/auth/v1/callback`);
  const params = new URL(callback).searchParams;
  const tampered = new URL(callback);
  tampered.searchParams.set('state', params.get('state').replace(/.$/, (c) => (c === 'A' ? 'B' : 'A')));
  const bad = await fetch(tampered, { redirect: 'manual' });
  assert.equal(bad.status, 302);
  assert.equal(new URL(bad.headers.get('location')).searchParams.get('error_code'), 'bad_oauth_state');
  const ok = await fetch(callback, { redirect: 'manual' });
  assert.ok(new URL(ok.headers.get('location')).searchParams.get('code'));
  const replay = await fetch(callback, { redirect: 'manual' });
  assert.equal(new URL(replay.headers.get('location')).searchParams.get('error_code'), 'bad_oauth_state');
  // A redirect_to outside the allow-list goes to the site URL instead.
  const { data: evil } = await pkceClient().auth.signInWithOAuth({ provider: 'keycloak', options: { redirectTo: 'https://evil.example.com/', skipBrowserRedirect: true } });
  const landed = await follow(evil.url, (u) => u.startsWith(url) && !u.includes('/auth/v1/'));
  assert.ok(!landed.startsWith('https://evil.example.com'), landed);
  assert.ok(new URL(landed).searchParams.get('code'), landed);
  // An unknown provider.
  const unknown = await fetch(`${url}/auth/v1/authorize?provider=nonesuch`, { redirect: 'manual' });
  assert.equal(unknown.status, 400);
});

// An ID token from the real provider, obtained as a native app would
// (its own redirect URI, the code exchanged with the client secret).
async function providerIdToken(nonceHash, loginHint) {
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const start = new URL(`${oidc}/auth`);
  for (const [k, v] of Object.entries({
    client_id: clientId, redirect_uri: nativeRedirect, response_type: 'code', scope: 'openid email profile',
    nonce: nonceHash, state: randomUUID(), code_challenge: challenge, code_challenge_method: 'S256',
    ...(loginHint ? { login_hint: loginHint, prompt: 'login' } : {}),
  })) start.searchParams.set(k, v);
  const back = await follow(start.toString(), nativeRedirect);
  const code = new URL(back).searchParams.get('code');
  const r = await fetch(`${oidc}/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: nativeRedirect, code_verifier: verifier }),
  });
  assert.equal(r.status, 200);
  return (await r.json()).id_token;
}

test('signInWithIdToken with an ID token of the real provider, and its refusals', async () => {
  const nonce = randomUUID();
  const nonceHash = createHash('sha256').update(nonce).digest('hex');
  const idToken = await providerIdToken(nonceHash);
  const supabase = createClient(url, anonKey, { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } });
  const { data, error } = await supabase.auth.signInWithIdToken({ provider: 'keycloak', token: idToken, nonce });
  assert.equal(error, null);
  assert.equal(data.user.identities.find((i) => i.provider === 'keycloak').identity_data.sub, 'oidc-ada');

  const wrongNonce = await supabase.auth.signInWithIdToken({ provider: 'keycloak', token: idToken, nonce: 'other' });
  assert.match(wrongNonce.error.message, /Nonces mismatch/);
  const [h, p, s] = idToken.split('.');
  const forged = JSON.parse(Buffer.from(p, 'base64url'));
  forged.aud = 'someone-else';
  const wrongAud = await supabase.auth.signInWithIdToken({ provider: 'keycloak', token: `${h}.${Buffer.from(JSON.stringify(forged)).toString('base64url')}.${s}`, nonce });
  assert.match(wrongAud.error.message, /Bad ID token/, 'a changed payload breaks the signature');
  const badSig = await supabase.auth.signInWithIdToken({ provider: 'keycloak', token: `${h}.${p}.${s.slice(0, -4)}AAAA`, nonce });
  assert.match(badSig.error.message, /Bad ID token/);
});

test('linkIdentity with an ID token links the identity to the signed-in user', async () => {
  const supabase = createClient(url, anonKey, { auth: { persistSession: true, autoRefreshToken: false, storage: memoryStorage() }, realtime: { transport: ws } });
  const { data: anon, error: anonError } = await supabase.auth.signInAnonymously();
  assert.equal(anonError, null);
  const nonce = randomUUID();
  const nonceHash = createHash('sha256').update(nonce).digest('hex');
  const token = await providerIdToken(nonceHash, 'oidc-grace');
  const { data, error } = await supabase.auth.linkIdentity({ provider: 'keycloak', token, nonce });
  assert.equal(error, null);
  assert.equal(data.user.id, anon.user.id, 'the same user, now with the identity');
  assert.equal(data.user.is_anonymous, false);
  assert.ok(data.user.identities.some((i) => i.provider === 'keycloak' && i.identity_data.sub === 'oidc-grace'));
  const { data: me } = await supabase.auth.getUser();
  assert.equal(me.user.id, anon.user.id);

  // oidc-ada belongs to the user the sign-in tests made.
  const other = createClient(url, anonKey, { auth: { persistSession: true, autoRefreshToken: false, storage: memoryStorage() }, realtime: { transport: ws } });
  await other.auth.signInAnonymously();
  const adaNonce = randomUUID();
  const adaToken = await providerIdToken(createHash('sha256').update(adaNonce).digest('hex'), 'oidc-ada');
  const taken = await other.auth.linkIdentity({ provider: 'keycloak', token: adaToken, nonce: adaNonce });
  assert.equal(taken.error?.code, 'identity_already_exists');
});
