// Passkeys and WebAuthn MFA through the real supabase-js client (auth-js's
// signInWithPasskey, registerPasskey, auth.passkey.*, auth.admin.passkey.*
// and mfa.webauthn.*), against the running sovra binary that run.sh started.
//
// auth-js drives `navigator.credentials`; this file runs in its own node
// process (node --test) and gives it a browser-shaped global with a
// software authenticator behind `navigator.credentials`: real P-256 keys,
// real CBOR attestation objects and real signatures over authenticator
// data, checked by the server like any browser's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, randomBytes, randomUUID, sign } from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;
const origin = new URL(url).origin;

const opts = {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  realtime: { transport: ws },
};
const client = () => createClient(url, anonKey, opts);
const service = createClient(url, serviceKey, opts);
const email = (tag) => `${tag}-${randomUUID().slice(0, 8)}@example.com`;

const sha256 = (bytes) => createHash('sha256').update(bytes).digest();
const b64url = (bytes) => Buffer.from(bytes).toString('base64url');
const toArrayBuffer = (buf) => buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
const bytesOf = (source) => Buffer.from(source instanceof ArrayBuffer ? new Uint8Array(source) : source);

// CBOR heads and strings, as authenticators encode them.
function head(major, n) {
  if (n < 24) return Buffer.from([(major << 5) | n]);
  if (n < 256) return Buffer.from([(major << 5) | 24, n]);
  return Buffer.from([(major << 5) | 25, n >> 8, n & 0xff]);
}
const cborBytes = (b) => Buffer.concat([head(2, b.length), b]);
const cborText = (s) => Buffer.concat([head(3, Buffer.byteLength(s)), Buffer.from(s)]);

// The browser's PublicKeyCredential (auth-js checks `instanceof`).
class PublicKeyCredential {
  constructor(rawId, response) {
    this.id = b64url(rawId);
    this.rawId = toArrayBuffer(rawId);
    this.type = 'public-key';
    this.response = response;
    this.authenticatorAttachment = 'platform';
  }
  getClientExtensionResults() {
    return {};
  }
}

// A platform authenticator holding discoverable ES256 credentials.
class SoftAuthenticator {
  constructor() {
    this.credentials = [];
    this.origin = origin;
  }

  clientData(type, challenge) {
    return Buffer.from(
      JSON.stringify({ type, challenge: b64url(bytesOf(challenge)), origin: this.origin, crossOrigin: false }),
    );
  }

  async create({ publicKey }) {
    const rpId = publicKey.rp.id;
    assert.equal(rpId, window.location.hostname, 'a browser refuses an RP ID that is not its host');
    const { privateKey, publicKey: pub } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwk = pub.export({ format: 'jwk' });
    const cose = Buffer.concat([
      Buffer.from([0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21]),
      cborBytes(Buffer.from(jwk.x, 'base64url')),
      Buffer.from([0x22]),
      cborBytes(Buffer.from(jwk.y, 'base64url')),
    ]);
    const id = randomBytes(16);
    const idLength = Buffer.alloc(2);
    idLength.writeUInt16BE(id.length);
    const authData = Buffer.concat([
      sha256(Buffer.from(rpId)),
      Buffer.from([0x45]), // UP | UV | AT
      Buffer.alloc(4), // counter 0
      Buffer.alloc(16), // AAGUID
      idLength,
      id,
      cose,
    ]);
    const attestation = Buffer.concat([
      Buffer.from([0xa3]),
      cborText('fmt'),
      cborText('none'),
      cborText('attStmt'),
      Buffer.from([0xa0]),
      cborText('authData'),
      cborBytes(authData),
    ]);
    this.credentials.push({ id, rpId, privateKey, userHandle: bytesOf(publicKey.user.id), counter: 0 });
    return new PublicKeyCredential(id, {
      clientDataJSON: toArrayBuffer(this.clientData('webauthn.create', publicKey.challenge)),
      attestationObject: toArrayBuffer(attestation),
    });
  }

  async get({ publicKey }) {
    const allowed = (publicKey.allowCredentials || []).map((c) => b64url(bytesOf(c.id)));
    // Where a browser would show a picker, the newest credential is taken.
    const credential = this.credentials
      .filter((c) => c.rpId === publicKey.rpId)
      .reverse()
      .find((c) => allowed.length === 0 || allowed.includes(b64url(c.id)));
    if (!credential) throw Object.assign(new Error('no credential'), { name: 'NotAllowedError' });
    credential.counter += 1;
    const counter = Buffer.alloc(4);
    counter.writeUInt32BE(credential.counter);
    const authData = Buffer.concat([sha256(Buffer.from(credential.rpId)), Buffer.from([0x05]), counter]);
    const clientData = this.clientData('webauthn.get', publicKey.challenge);
    const signature = sign('sha256', Buffer.concat([authData, sha256(clientData)]), {
      key: credential.privateKey,
      dsaEncoding: 'der',
    });
    return new PublicKeyCredential(credential.id, {
      clientDataJSON: toArrayBuffer(clientData),
      authenticatorData: toArrayBuffer(authData),
      signature: toArrayBuffer(signature),
      userHandle: toArrayBuffer(credential.userHandle),
    });
  }
}

const authenticator = new SoftAuthenticator();
const location = new URL(url);
globalThis.window = { location, PublicKeyCredential };
globalThis.document = {};
globalThis.PublicKeyCredential = PublicKeyCredential;
Object.defineProperty(globalThis, 'navigator', {
  configurable: true,
  value: {
    credentials: {
      create: (options) => authenticator.create(options),
      get: (options) => authenticator.get(options),
    },
  },
});

async function signedInUser(tag) {
  const address = email(tag);
  const created = await service.auth.admin.createUser({ email: address, password: 'correct horse', email_confirm: true });
  assert.equal(created.error, null);
  const c = client();
  const signIn = await c.auth.signInWithPassword({ email: address, password: 'correct horse' });
  assert.equal(signIn.error, null);
  return { c, user: created.data.user };
}

test('registerPasskey, then signInWithPasskey with no password; list, rename, delete; admin list and delete', async () => {
  const { c, user } = await signedInUser('passkey');
  const registered = await c.auth.registerPasskey();
  assert.equal(registered.error, null, JSON.stringify(registered.error));
  assert.ok(registered.data.id);

  const fresh = client();
  const signedIn = await fresh.auth.signInWithPasskey();
  assert.equal(signedIn.error, null, JSON.stringify(signedIn.error));
  assert.equal(signedIn.data.user.id, user.id);
  assert.ok(signedIn.data.session.access_token);
  const { data: current } = await fresh.auth.getUser();
  assert.equal(current.user.id, user.id);

  const listed = await fresh.auth.passkey.list();
  assert.equal(listed.error, null);
  assert.equal(listed.data.length, 1);
  assert.equal(listed.data[0].id, registered.data.id);
  assert.ok(listed.data[0].last_used_at);

  const renamed = await fresh.auth.passkey.update({ passkeyId: registered.data.id, friendlyName: 'Laptop' });
  assert.equal(renamed.error, null);
  assert.equal(renamed.data.friendly_name, 'Laptop');

  const adminListed = await service.auth.admin.passkey.listPasskeys({ userId: user.id });
  assert.equal(adminListed.error, null);
  assert.equal(adminListed.data[0].friendly_name, 'Laptop');

  // A second passkey, removed by the admin; the first by its owner.
  const second = await c.auth.registerPasskey();
  assert.equal(second.error, null);
  const adminDeleted = await service.auth.admin.passkey.deletePasskey({ userId: user.id, passkeyId: second.data.id });
  assert.equal(adminDeleted.error, null);
  const deleted = await fresh.auth.passkey.delete({ passkeyId: registered.data.id });
  assert.equal(deleted.error, null);
  assert.deepEqual((await fresh.auth.passkey.list()).data, []);
});

test('signInWithPasskey refuses a ceremony from another origin and a passkey the server does not know', async () => {
  const { c } = await signedInUser('passkey-refused');
  assert.equal((await c.auth.registerPasskey()).error, null);

  authenticator.origin = 'https://evil.example.com';
  try {
    const phished = await client().auth.signInWithPasskey();
    assert.equal(phished.data?.session ?? null, null);
    assert.equal(phished.error.code, 'webauthn_verification_failed');
  } finally {
    authenticator.origin = origin;
  }

  const { data: passkeys } = await c.auth.passkey.list();
  for (const p of passkeys) assert.equal((await c.auth.passkey.delete({ passkeyId: p.id })).error, null);
  // The authenticator still holds the credentials; the server no longer.
  authenticator.credentials = authenticator.credentials.slice(-1);
  const unknown = await client().auth.signInWithPasskey();
  assert.equal(unknown.error.code, 'webauthn_credential_not_found');
});

test('mfa.webauthn.register raises the session to aal2, mfa.webauthn.authenticate steps up later', async () => {
  const { c, user } = await signedInUser('mfa-key');
  const registered = await c.auth.mfa.webauthn.register({ friendlyName: 'Security key' });
  assert.equal(registered.error, null, JSON.stringify(registered.error));
  const aal = await c.auth.mfa.getAuthenticatorAssuranceLevel();
  assert.equal(aal.data.currentLevel, 'aal2');

  const later = client();
  await later.auth.signInWithPassword({ email: user.email, password: 'correct horse' });
  const before = await later.auth.mfa.getAuthenticatorAssuranceLevel();
  assert.equal(before.data.currentLevel, 'aal1');
  assert.equal(before.data.nextLevel, 'aal2');
  const { data: factors } = await later.auth.mfa.listFactors();
  const factor = factors.all.find((f) => f.factor_type === 'webauthn');
  assert.equal(factor.status, 'verified');
  const stepped = await later.auth.mfa.webauthn.authenticate({ factorId: factor.id });
  assert.equal(stepped.error, null, JSON.stringify(stepped.error));
  const after = await later.auth.mfa.getAuthenticatorAssuranceLevel();
  assert.equal(after.data.currentLevel, 'aal2');
  assert.ok(after.data.currentAuthenticationMethods.some((m) => m.method === 'mfa/webauthn'));

  // A relying party other than the server's is refused.
  const wrongRp = await later.auth.mfa.webauthn.authenticate({
    factorId: factor.id,
    webauthn: { rpId: 'evil.example.com', rpOrigins: ['https://evil.example.com'] },
  });
  assert.equal(wrongRp.error.code, 'validation_failed');
});
