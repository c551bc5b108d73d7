// Auth through the real supabase-js client, against the running sovra
// binary that run.sh started (confirmation by mail on, mail in the local
// mailbox, anonymous sign-ins on).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;

const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const client = () => createClient(url, anonKey, opts);
const service = createClient(url, serviceKey, opts);
const email = (tag) => `${tag}-${randomUUID().slice(0, 8)}@example.com`;

// The latest message to `to` in Sovra's mailbox (read with the service key).
async function mail(to) {
  const r = await fetch(`${url}/auth/v1/admin/mailbox?to=${encodeURIComponent(to)}`, {
    headers: { apikey: serviceKey, Authorization: `Bearer ${serviceKey}` },
  });
  assert.equal(r.status, 200);
  const messages = await r.json();
  assert.ok(messages.length > 0, `no mail to ${to}`);
  return messages[messages.length - 1];
}
const codeIn = (message) => /code: (\d{6})/.exec(message.body)[1];

// RFC 6238 TOTP (SHA-1, 6 digits, 30 s), computed here as an authenticator app would.
function totp(secretBase32, now = Date.now()) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secretBase32.replace(/=+$/, '')) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(now / 1000 / 30)));
  const h = createHmac('sha1', key).update(counter).digest();
  const o = h[19] & 0xf;
  const n = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1_000_000).padStart(6, '0');
}

test('signUp, confirm through the mailbox, signInWithPassword, getUser, and RLS with the session', async () => {
  const c = client();
  const address = email('ada');
  const signUp = await c.auth.signUp({ email: address, password: 'correct horse', options: { data: { name: 'Ada' } } });
  assert.equal(signUp.error, null);
  assert.equal(signUp.data.session, null, 'confirmation is required');
  assert.equal(signUp.data.user.email, address);

  const early = await c.auth.signInWithPassword({ email: address, password: 'correct horse' });
  assert.equal(early.error.code, 'email_not_confirmed');

  const confirm = await c.auth.verifyOtp({ email: address, token: codeIn(await mail(address)), type: 'signup' });
  assert.equal(confirm.error, null);
  assert.ok(confirm.data.session.access_token);

  const wrong = await c.auth.signInWithPassword({ email: address, password: 'wrong horse' });
  assert.equal(wrong.error.code, 'invalid_credentials');
  assert.equal(wrong.error.status, 400);

  const signIn = await c.auth.signInWithPassword({ email: address, password: 'correct horse' });
  assert.equal(signIn.error, null);
  const { data: { user } } = await c.auth.getUser();
  assert.equal(user.email, address);
  assert.equal(user.user_metadata.name, 'Ada');
  assert.ok(user.email_confirmed_at);

  // The session's token reaches REST, where the diary policy checks auth.uid().
  const inserted = await c.from('diary').insert({ body: 'from supabase-js' }).select('owner, body').single();
  assert.equal(inserted.error, null);
  assert.equal(inserted.data.owner, user.id);
  const mine = await c.from('diary').select('body');
  assert.deepEqual(mine.data, [{ body: 'from supabase-js' }]);
  const other = client();
  const otherAddress = email('eve');
  await service.auth.admin.createUser({ email: otherAddress, password: 'password1', email_confirm: true });
  await other.auth.signInWithPassword({ email: otherAddress, password: 'password1' });
  const theirs = await other.from('diary').select('body');
  assert.deepEqual(theirs.data, []);
});

test('onAuthStateChange sees sign-in, refresh, update and sign-out; refreshSession rotates', async () => {
  const c = client();
  const address = email('events');
  await service.auth.admin.createUser({ email: address, password: 'password1', email_confirm: true });
  const events = [];
  c.auth.onAuthStateChange((event) => events.push(event));
  const { data } = await c.auth.signInWithPassword({ email: address, password: 'password1' });
  const refreshed = await c.auth.refreshSession();
  assert.equal(refreshed.error, null);
  assert.notEqual(refreshed.data.session.refresh_token, data.session.refresh_token);
  assert.equal(refreshed.data.session.user.id, data.user.id);
  const updated = await c.auth.updateUser({ data: { theme: 'dark' } });
  assert.equal(updated.error, null);
  assert.equal(updated.data.user.user_metadata.theme, 'dark');
  const out = await c.auth.signOut();
  assert.equal(out.error, null);
  await new Promise((r) => setTimeout(r, 50));
  for (const e of ['SIGNED_IN', 'TOKEN_REFRESHED', 'USER_UPDATED', 'SIGNED_OUT']) {
    assert.ok(events.includes(e), `${e} in ${events}`);
  }
  // The old refresh token died with the session.
  const dead = await client().auth.refreshSession({ refresh_token: refreshed.data.session.refresh_token });
  assert.ok(dead.error);
});

test('signOut scopes: local, others, global', async () => {
  const address = email('scopes');
  await service.auth.admin.createUser({ email: address, password: 'password1', email_confirm: true });
  const [a, b, c] = [client(), client(), client()];
  for (const x of [a, b, c]) await x.auth.signInWithPassword({ email: address, password: 'password1' });
  const tokenOf = async (x) => (await x.auth.getSession()).data.session.access_token;
  // auth-js reads session_not_found as "signed out": an error and no user.
  const signedOut = async (token) => {
    const r = await client().auth.getUser(token);
    assert.equal(r.data.user, null);
    assert.equal(r.error.name, 'AuthSessionMissingError');
  };
  const [ta, tb, tc] = [await tokenOf(a), await tokenOf(b), await tokenOf(c)];
  assert.equal((await a.auth.signOut({ scope: 'local' })).error, null);
  await signedOut(ta);
  assert.equal((await client().auth.getUser(tb)).error, null);
  assert.equal((await b.auth.signOut({ scope: 'others' })).error, null);
  await signedOut(tc);
  assert.equal((await client().auth.getUser(tb)).error, null);
  assert.equal((await b.auth.signOut({ scope: 'global' })).error, null);
  await signedOut(tb);
});

test('signInWithOtp then verifyOtp with the mailed code', async () => {
  const c = client();
  const address = email('otp');
  const sent = await c.auth.signInWithOtp({ email: address });
  assert.equal(sent.error, null);
  const verified = await c.auth.verifyOtp({ email: address, token: codeIn(await mail(address)), type: 'email' });
  assert.equal(verified.error, null);
  assert.equal(verified.data.user.email, address);
  const refused = await c.auth.signInWithOtp({ email: email('nobody'), options: { shouldCreateUser: false } });
  assert.equal(refused.error.code, 'otp_disabled');
});

test('signInAnonymously, then make the user permanent', async () => {
  const c = client();
  const anon = await c.auth.signInAnonymously({ options: { data: { cart: 3 } } });
  assert.equal(anon.error, null);
  assert.equal(anon.data.user.is_anonymous, true);
  const address = email('anon');
  const linked = await c.auth.updateUser({ email: address });
  assert.equal(linked.error, null);
  assert.equal(linked.data.user.new_email, address);
  const verified = await c.auth.verifyOtp({ email: address, token: codeIn(await mail(address)), type: 'email_change' });
  assert.equal(verified.error, null);
  assert.equal(verified.data.user.is_anonymous, false);
  assert.equal(verified.data.user.user_metadata.cart, 3);
});

test('MFA: enroll, challenge, verify with a TOTP computed here, and the assurance level', async () => {
  const c = client();
  const address = email('mfa');
  await service.auth.admin.createUser({ email: address, password: 'password1', email_confirm: true });
  await c.auth.signInWithPassword({ email: address, password: 'password1' });
  const enrolled = await c.auth.mfa.enroll({ factorType: 'totp', friendlyName: 'app' });
  assert.equal(enrolled.error, null);
  assert.ok(enrolled.data.totp.qr_code.startsWith('data:image/svg+xml'));
  const challenge = await c.auth.mfa.challenge({ factorId: enrolled.data.id });
  assert.equal(challenge.error, null);
  const bad = await c.auth.mfa.verify({ factorId: enrolled.data.id, challengeId: challenge.data.id, code: '000000' });
  assert.equal(bad.error.code, 'mfa_verification_failed');
  const ok = await c.auth.mfa.verify({
    factorId: enrolled.data.id,
    challengeId: challenge.data.id,
    code: totp(enrolled.data.totp.secret),
  });
  assert.equal(ok.error, null);
  const aal = await c.auth.mfa.getAuthenticatorAssuranceLevel();
  assert.equal(aal.data.currentLevel, 'aal2');
  assert.equal(aal.data.nextLevel, 'aal2');
  const factors = await c.auth.mfa.listFactors();
  assert.equal(factors.data.totp.length, 1);
  assert.equal(factors.data.totp[0].status, 'verified');
  // A fresh password sign-in is aal1 and must step up.
  const d = client();
  await d.auth.signInWithPassword({ email: address, password: 'password1' });
  const level = await d.auth.mfa.getAuthenticatorAssuranceLevel();
  assert.deepEqual([level.data.currentLevel, level.data.nextLevel], ['aal1', 'aal2']);
  const unenroll = await c.auth.mfa.unenroll({ factorId: enrolled.data.id });
  assert.equal(unenroll.error, null);
});

test('admin: createUser, listUsers, deleteUser; refused without the service key', async () => {
  const address = email('admin');
  const created = await service.auth.admin.createUser({ email: address, password: 'password1', email_confirm: true, user_metadata: { team: 'a' } });
  assert.equal(created.error, null);
  assert.equal(created.data.user.user_metadata.team, 'a');
  const listed = await service.auth.admin.listUsers({ page: 1, perPage: 2 });
  assert.equal(listed.error, null);
  assert.equal(listed.data.users.length, 2);
  assert.ok(listed.data.total >= 3);
  assert.equal(listed.data.nextPage, 2);
  const removed = await service.auth.admin.deleteUser(created.data.user.id);
  assert.equal(removed.error, null);
  const gone = await service.auth.admin.getUserById(created.data.user.id);
  assert.equal(gone.error.status, 404);
  const refused = await client().auth.admin.listUsers();
  assert.ok(refused.error);
  const dup = await service.auth.admin.createUser({ email: email('x') });
  assert.equal(dup.error, null);
  const again = await service.auth.admin.createUser({ email: dup.data.user.email });
  assert.equal(again.error.code, 'email_exists');
});

test('with an EC signing key, getClaims() verifies the access token locally against the JWKS', async () => {
  const es256 = process.env.E2E_ES256_URL;
  const calls = [];
  const counting = (input, init) => {
    calls.push(new URL(typeof input === 'string' ? input : input.url).pathname);
    return fetch(input, init);
  };
  const c = createClient(es256, anonKey, { ...opts, global: { fetch: counting } });
  const email = `claims-${randomUUID().slice(0, 8)}@example.com`;
  assert.equal((await service.auth.admin.createUser({ email, password: 'password1', email_confirm: true })).error, null);
  const signedIn = await c.auth.signInWithPassword({ email, password: 'password1' });
  assert.equal(signedIn.error, null, JSON.stringify(signedIn.error));
  const header = JSON.parse(Buffer.from(signedIn.data.session.access_token.split('.')[0], 'base64url').toString());
  assert.deepEqual([header.alg, header.kid], ['ES256', 'e2e-ec']);
  calls.length = 0;
  const { data, error } = await c.auth.getClaims();
  assert.equal(error, null, JSON.stringify(error));
  assert.equal(data.claims.email, email);
  assert.deepEqual(calls, ['/auth/v1/.well-known/jwks.json'], 'verified locally, not through /user');
  // A tampered token fails the local check.
  const [h, p, sig] = signedIn.data.session.access_token.split('.');
  const forgedPayload = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, 'base64url')), role: 'service_role' })).toString('base64url');
  const forged = await c.auth.getClaims(`${h}.${forgedPayload}.${sig}`);
  assert.ok(forged.error, 'a tampered token is refused');
});
