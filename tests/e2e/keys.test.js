// Supabase's opaque API keys (sb_publishable_… and sb_secret_…), made by
// `sovra keys --rotate-opaque` in run.sh, through the real supabase-js:
// without a session it sends them both as `apikey` and as the bearer, and
// every service takes them as the anon and service_role keys.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const publishable = process.env.SOVRA_PUBLISHABLE_KEY;
const secret = process.env.SOVRA_SECRET_KEY;
const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };

test('the keys have Supabase\'s format', () => {
  assert.match(publishable, /^sb_publishable_[A-Za-z0-9]{32}$/);
  assert.match(secret, /^sb_secret_[A-Za-z0-9]{32}$/);
});

test('a publishable key is anon on REST, storage, auth and realtime', async () => {
  const client = createClient(url, publishable, opts);
  // REST under anon's policy: only the public todo.
  const todos = await client.from('todos').select('task');
  assert.equal(todos.error, null, JSON.stringify(todos.error));
  assert.deepEqual(todos.data.map((t) => t.task), ['public:read me']);
  // Storage: anon sees no buckets, and may not make one.
  const buckets = await client.storage.listBuckets();
  assert.equal(buckets.error, null, JSON.stringify(buckets.error));
  const made = await client.storage.createBucket(`anon-${randomUUID().slice(0, 8)}`);
  assert.ok(made.error);
  // Auth: sign up and sign in, then the user's token takes over.
  const email = `opaque-${randomUUID().slice(0, 8)}@example.com`;
  const admin = createClient(url, secret, opts);
  assert.equal((await admin.auth.admin.createUser({ email, password: 'password1', email_confirm: true })).error, null);
  const signedIn = await client.auth.signInWithPassword({ email, password: 'password1' });
  assert.equal(signedIn.error, null, JSON.stringify(signedIn.error));
  // Now authenticated (no rows of their own), not anon (the public todo).
  const mine = await client.from('todos').select('task');
  assert.equal(mine.error, null, JSON.stringify(mine.error));
  assert.deepEqual(mine.data, []);
  // Admin calls with the publishable key are refused.
  const notAdmin = await createClient(url, publishable, opts).auth.admin.listUsers();
  assert.equal(notAdmin.error?.status, 403);
  // Realtime: the socket's apikey (and access_token) is the publishable key.
  const rt = createClient(url, publishable, opts);
  const channel = rt.channel(`opaque-${randomUUID()}`);
  const status = await new Promise((resolve) => {
    channel.subscribe((s, err) => {
      if (s !== 'SUBSCRIBED' && s !== 'CHANNEL_ERROR' && s !== 'TIMED_OUT') return;
      resolve({ s, err });
    });
  });
  assert.equal(status.s, 'SUBSCRIBED', String(status.err));
  await rt.removeAllChannels();
});

test('a secret key is service_role: admin API, RLS bypassed, buckets made', async () => {
  const admin = createClient(url, secret, opts);
  const users = await admin.auth.admin.listUsers({ page: 1, perPage: 1 });
  assert.equal(users.error, null, JSON.stringify(users.error));
  const all = await admin.from('todos').select('task').eq('task', 'b secret');
  assert.deepEqual(all.data, [{ task: 'b secret' }]);
  const id = `secret-${randomUUID().slice(0, 8)}`;
  assert.equal((await admin.storage.createBucket(id)).error, null);
  assert.equal((await admin.storage.deleteBucket(id)).error, null);
});

test('an unknown opaque key is refused everywhere', async () => {
  const forged = createClient(url, `sb_secret_${'x'.repeat(32)}`, opts);
  const rest = await forged.from('todos').select('task');
  assert.equal(rest.status, 401);
  const auth = await forged.auth.admin.listUsers();
  assert.equal(auth.error?.status, 401);
  const storage = await fetch(`${url}/storage/v1/bucket`, { headers: { apikey: `sb_publishable_${'y'.repeat(32)}` } });
  // Storage answers in its own error shape (HTTP 400, statusCode "403").
  assert.equal(storage.status, 400);
  assert.deepEqual(await storage.json(), {
    statusCode: '403', error: 'Unauthorized', message: 'Invalid API key', code: 'AccessDenied',
  });
});
