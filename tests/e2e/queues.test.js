// Queues through supabase-js: Supabase's pgmq_public wrappers at
// /rest/v1/rpc with the schema exposed (run.sh adds pgmq_public to
// SOVRA_REST_SCHEMAS), as the Queues quickstart calls them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;
const USER_A = '00000000-0000-0000-0000-00000000000a';

function userToken(sub) {
  const { keys } = JSON.parse(readFileSync(process.env.SOVRA_KEYS_FILE, 'utf8'));
  const key = keys.find((k) => k.status === 'active');
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: 'HS256', typ: 'JWT', kid: key.kid });
  const body = b64({ sub, role: 'authenticated', aud: 'authenticated', iat: now, exp: now + 3600 });
  const sig = createHmac('sha256', Buffer.from(key.secret, 'utf8')).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const service = createClient(url, serviceKey, opts);
const anon = createClient(url, anonKey, opts);
const user = createClient(url, anonKey, {
  ...opts,
  global: { headers: { Authorization: `Bearer ${userToken(USER_A)}` } },
});

test('a user sends, a service-role worker reads and deletes', async () => {
  const sent = await user.schema('pgmq_public').rpc('send', {
    queue_name: 'e2e_tasks',
    message: { kind: 'welcome', to: USER_A },
  });
  assert.equal(sent.error, null);
  assert.equal(sent.data.length, 1);
  const id = sent.data[0];
  const batch = await service.schema('pgmq_public').rpc('send_batch', {
    queue_name: 'e2e_tasks',
    messages: [{ n: 1 }, { n: 2 }],
  });
  assert.equal(batch.error, null);
  assert.deepEqual(batch.data, [id + 1, id + 2]);

  const read = await service.schema('pgmq_public').rpc('read', { queue_name: 'e2e_tasks', sleep_seconds: 30, n: 2 });
  assert.equal(read.error, null);
  assert.deepEqual(read.data.map((m) => m.msg_id), [id, id + 1]);
  assert.deepEqual(read.data[0].message, { kind: 'welcome', to: USER_A });
  assert.equal(read.data[0].read_ct, 1);
  // Hidden from the next reader until the visibility timeout passes.
  const again = await service.schema('pgmq_public').rpc('read', { queue_name: 'e2e_tasks', sleep_seconds: 30, n: 5 });
  assert.deepEqual(again.data.map((m) => m.msg_id), [id + 2]);

  const del = await service.schema('pgmq_public').rpc('delete', { queue_name: 'e2e_tasks', message_id: id });
  assert.deepEqual([del.error, del.data], [null, true]);
  const arch = await service.schema('pgmq_public').rpc('archive', { queue_name: 'e2e_tasks', message_id: id + 1 });
  assert.deepEqual([arch.error, arch.data], [null, true]);
  const gone = await service.schema('pgmq_public').rpc('delete', { queue_name: 'e2e_tasks', message_id: id });
  assert.deepEqual([gone.error, gone.data], [null, false]);

  await service.schema('pgmq_public').rpc('send', { queue_name: 'e2e_tasks', message: { last: true } });
  const popped = await service.schema('pgmq_public').rpc('pop', { queue_name: 'e2e_tasks' });
  assert.equal(popped.error, null);
  assert.deepEqual(popped.data[0].message, { last: true });
});

test('anon is refused; a user without delete rights cannot take messages', async () => {
  const denied = await anon.schema('pgmq_public').rpc('send', { queue_name: 'e2e_tasks', message: {} });
  assert.equal(denied.status, 401);
  assert.equal(denied.error.code, '42501');
  const cannotDelete = await user.schema('pgmq_public').rpc('pop', { queue_name: 'e2e_tasks' });
  assert.equal(cannotDelete.status, 403);
  assert.equal(cannotDelete.error.code, '42501');
});
