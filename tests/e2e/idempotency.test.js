// Idempotency-Key through supabase-js (a Sovra extension, docs/rest.md): a
// retried insert or rpc call with the same key writes once and gets the
// first response again; reusing a key for another request is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;
const USER = '00000000-0000-0000-0000-0000000000c1';

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

// A fetch of our own that records whether each answer was a replay.
const replays = [];
const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const user = createClient(url, anonKey, {
  ...opts,
  global: {
    headers: { Authorization: `Bearer ${userToken(USER)}` },
    fetch: async (input, init) => {
      const response = await fetch(input, init);
      replays.push(response.headers.get('idempotent-replayed'));
      return response;
    },
  },
});
const service = createClient(url, serviceKey, opts);

async function payments() {
  const { data, error } = await service.from('payments').select('id, amount').eq('owner', USER).order('id');
  assert.equal(error, null);
  return data;
}

test('a retried insert with the same key writes once and answers the same', async () => {
  const key = randomUUID();
  const insert = () => user.from('payments').insert({ amount: 42 }).select('id, amount').setHeader('Idempotency-Key', key);
  const first = await insert();
  const again = await insert();
  assert.equal(first.error, null);
  assert.equal(first.status, 201);
  assert.deepEqual([again.status, again.data], [first.status, first.data]);
  assert.deepEqual(replays.slice(-2), [null, 'true']);
  assert.deepEqual((await payments()).filter((p) => p.amount === 42), first.data);
});

test('an rpc call replays; another request under the same key is 422', async () => {
  const key = randomUUID();
  const first = await user.rpc('pay', { amount: 7 }).setHeader('Idempotency-Key', key);
  const again = await user.rpc('pay', { amount: 7 }).setHeader('Idempotency-Key', key);
  assert.equal(first.error, null);
  assert.equal(again.data, first.data);
  assert.equal(replays.at(-1), 'true');
  const other = await user.rpc('pay', { amount: 8 }).setHeader('Idempotency-Key', key);
  assert.equal(other.status, 422);
  assert.equal(other.error.code, 'IDEMPOTENCY_KEY_REUSED');
  const bad = await user.from('payments').insert({ amount: 9 }).setHeader('Idempotency-Key', 'x'.repeat(256));
  assert.equal(bad.status, 400);
  assert.equal(bad.error.code, 'IDEMPOTENCY_KEY_INVALID');
  const amounts = (await payments()).map((p) => p.amount);
  assert.equal(amounts.filter((a) => a === 7).length, 1);
  assert.equal(amounts.filter((a) => a === 8 || a === 9).length, 0);
});
