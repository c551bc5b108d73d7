// Sovra as an OAuth 2.1 / OpenID Connect provider, driven by a standard
// OAuth client library (openid-client from npm) as a third-party app
// would, with the consent given by the user through supabase-js
// (auth.oauth.*), and the clients managed with auth.admin.oauth.*.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import * as oidc from 'openid-client';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;
const redirectUri = 'http://localhost:8976/callback';

const options = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const admin = createClient(url, serviceKey, options);

async function signedInUser() {
  const email = `oauth-${randomUUID()}@example.com`;
  const { data: made, error } = await admin.auth.admin.createUser({ email, password: 'password1', email_confirm: true });
  assert.equal(error, null);
  const supabase = createClient(url, anonKey, options);
  const { error: signInError } = await supabase.auth.signInWithPassword({ email, password: 'password1' });
  assert.equal(signInError, null);
  return { supabase, user: made.user };
}

// Opens the authorization URL as the browser would: Sovra answers with a
// redirect to the app's consent page, carrying the authorization id.
async function consentPage(authorizationUrl) {
  const response = await fetch(authorizationUrl, { redirect: 'manual' });
  assert.equal(response.status, 302, await response.text());
  const location = new URL(response.headers.get('location'));
  assert.equal(location.pathname, '/oauth/consent');
  return location.searchParams.get('authorization_id');
}

async function start(config, scope) {
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const nonce = oidc.randomNonce();
  const authorizationUrl = oidc.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope,
    state,
    nonce,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
  });
  return { verifier, state, nonce, authorizationId: await consentPage(authorizationUrl) };
}

test('auth.admin.oauth manages OAuth clients', async () => {
  const { data: created, error } = await admin.auth.admin.oauth.createClient({
    client_name: 'Admin-managed app',
    redirect_uris: [redirectUri],
    client_uri: 'https://app.example.com',
  });
  assert.equal(error, null);
  assert.equal(created.client_type, 'confidential');
  assert.ok(created.client_secret.length >= 43);
  const { data: list } = await admin.auth.admin.oauth.listClients();
  assert.ok(list.clients.some((c) => c.client_id === created.client_id));
  const { data: got } = await admin.auth.admin.oauth.getClient(created.client_id);
  assert.equal(got.client_name, 'Admin-managed app');
  assert.equal(got.client_secret, undefined);
  const { data: updated } = await admin.auth.admin.oauth.updateClient(created.client_id, { client_name: 'Renamed app' });
  assert.equal(updated.client_name, 'Renamed app');
  const { data: regenerated } = await admin.auth.admin.oauth.regenerateClientSecret(created.client_id);
  assert.notEqual(regenerated.client_secret, created.client_secret);
  const { error: deleteError } = await admin.auth.admin.oauth.deleteClient(created.client_id);
  assert.equal(deleteError, null);
  const { error: gone } = await admin.auth.admin.oauth.getClient(created.client_id);
  assert.equal(gone.status, 404);
  assert.equal(gone.code, 'oauth_client_not_found');
  // A user's key is refused.
  const { supabase } = await signedInUser();
  const { error: notAdmin } = await supabase.auth.admin.oauth.listClients();
  assert.equal(notAdmin.status, 403);
});

test('openid-client: discovery, code + PKCE with consent through supabase-js, ID token, userinfo, refresh, revocation', async () => {
  const { data: registered } = await admin.auth.admin.oauth.createClient({
    client_name: 'Third-party app',
    redirect_uris: [redirectUri],
  });
  const config = await oidc.discovery(
    new URL(`${url}/auth/v1`),
    registered.client_id,
    undefined,
    oidc.ClientSecretBasic(registered.client_secret),
    { execute: [oidc.allowInsecureRequests] },
  );
  assert.equal(config.serverMetadata().issuer, `${url}/auth/v1`);
  const { supabase, user } = await signedInUser();

  // The consent page.
  const first = await start(config, 'openid email profile');
  const { data: details, error } = await supabase.auth.oauth.getAuthorizationDetails(first.authorizationId);
  assert.equal(error, null);
  assert.equal(details.authorization_id, first.authorizationId);
  assert.equal(details.client.name, 'Third-party app');
  assert.equal(details.user.email, user.email);
  assert.equal(details.scope, 'openid email profile');
  const { data: approved, error: approveError } = await supabase.auth.oauth.approveAuthorization(first.authorizationId, { skipBrowserRedirect: true });
  assert.equal(approveError, null);

  // Back at the app: the library checks state, PKCE, the ID token's
  // signature (against the JWK set), issuer, audience and nonce.
  const tokens = await oidc.authorizationCodeGrant(config, new URL(approved.redirect_url), {
    pkceCodeVerifier: first.verifier,
    expectedState: first.state,
    expectedNonce: first.nonce,
    idTokenExpected: true,
  });
  const idClaims = tokens.claims();
  assert.equal(idClaims.sub, user.id);
  assert.equal(idClaims.email, user.email);
  assert.equal(idClaims.aud, registered.client_id);
  const info = await oidc.fetchUserInfo(config, tokens.access_token, user.id);
  assert.equal(info.email, user.email);

  // The access token works as the user against the rest of Sovra.
  const asUser = await fetch(`${url}/sovra/v1/whoami/db`, {
    headers: { apikey: anonKey, authorization: `Bearer ${tokens.access_token}` },
  }).then((r) => r.json());
  assert.equal(asUser.uid, user.id);
  assert.equal(asUser.jwt.client_id, registered.client_id);
  const { data: me, error: meError } = await createClient(url, anonKey, options).auth.getUser(tokens.access_token);
  assert.equal(meError, null);
  assert.equal(me.user.id, user.id);
  // postgrest-js with the OAuth access token: RLS sees the user.
  const asClient = createClient(url, anonKey, { ...options, accessToken: async () => tokens.access_token });
  const { data: inserted, error: insertError } = await asClient.from('todos').insert({ task: 'from the oauth app' }).select().single();
  assert.equal(insertError, null);
  assert.equal(inserted.owner, user.id);
  const { data: visible } = await asClient.from('todos').select('task');
  assert.deepEqual(visible.map((t) => t.task), ['from the oauth app']);

  // Refresh, then revocation (RFC 7009) ends that session.
  const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token);
  assert.notEqual(refreshed.refresh_token, tokens.refresh_token);
  await oidc.tokenRevocation(config, refreshed.refresh_token);
  await assert.rejects(oidc.refreshTokenGrant(config, refreshed.refresh_token), (err) => err.error === 'invalid_grant');

  // The consent is remembered: the next authorization comes back approved.
  const second = await start(config, 'openid email');
  const { data: again } = await supabase.auth.oauth.getAuthorizationDetails(second.authorizationId);
  assert.ok(again.redirect_url, JSON.stringify(again));
  const secondTokens = await oidc.authorizationCodeGrant(config, new URL(again.redirect_url), {
    pkceCodeVerifier: second.verifier,
    expectedState: second.state,
    expectedNonce: second.nonce,
  });
  const { data: grants } = await supabase.auth.oauth.listGrants();
  assert.ok(grants.some((g) => g.client.id === registered.client_id));

  // Signing out (everywhere) revokes the client's session too.
  const { error: signOutError } = await supabase.auth.signOut();
  assert.equal(signOutError, null);
  await assert.rejects(oidc.refreshTokenGrant(config, secondTokens.refresh_token), (err) => err.error === 'invalid_grant');
  await assert.rejects(oidc.fetchUserInfo(config, secondTokens.access_token, user.id));
});

test('a denied consent reaches the app as access_denied; refusals come in OAuth shape', async () => {
  const { data: registered } = await admin.auth.admin.oauth.createClient({
    client_name: 'Denied app',
    redirect_uris: [redirectUri],
    token_endpoint_auth_method: 'none',
  });
  assert.equal(registered.client_type, 'public');
  const config = await oidc.discovery(new URL(`${url}/auth/v1`), registered.client_id, undefined, oidc.None(), {
    execute: [oidc.allowInsecureRequests],
  });
  const { supabase } = await signedInUser();
  const flow = await start(config, 'openid');
  await supabase.auth.oauth.getAuthorizationDetails(flow.authorizationId);
  const { data: denied } = await supabase.auth.oauth.denyAuthorization(flow.authorizationId, { skipBrowserRedirect: true });
  await assert.rejects(
    oidc.authorizationCodeGrant(config, new URL(denied.redirect_url), { pkceCodeVerifier: flow.verifier, expectedState: flow.state }),
    (err) => err.error === 'access_denied',
  );
  // Approved, but exchanged with the wrong verifier.
  const next = await start(config, 'openid');
  await supabase.auth.oauth.getAuthorizationDetails(next.authorizationId);
  const { data: approved } = await supabase.auth.oauth.approveAuthorization(next.authorizationId, { skipBrowserRedirect: true });
  await assert.rejects(
    oidc.authorizationCodeGrant(config, new URL(approved.redirect_url), {
      pkceCodeVerifier: oidc.randomPKCECodeVerifier(),
      expectedState: next.state,
      expectedNonce: next.nonce,
    }),
    (err) => err.error === 'invalid_grant',
  );
  // Plain PKCE is refused at the authorization endpoint.
  const plain = new URL(`${url}/auth/v1/oauth/authorize`);
  plain.search = new URLSearchParams({
    client_id: registered.client_id,
    redirect_uri: redirectUri,
    response_type: 'code',
    code_challenge: oidc.randomPKCECodeVerifier(),
    code_challenge_method: 'plain',
  }).toString();
  const refused = await fetch(plain, { redirect: 'manual' });
  assert.equal(refused.status, 400);
  assert.equal((await refused.json()).error_code, 'validation_failed');
});
