// The transactional outbox through the real supabase-js client: events that
// sovra.outbox_send wrote in committed transactions (here through an RPC
// as the service role) reach realtime broadcast subscribers in commit
// order. See fixture.sql for the destination and the function.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const anon = createClient(url, process.env.SOVRA_ANON_KEY, opts);
const service = createClient(url, process.env.SOVRA_SERVICE_KEY, opts);
after(async () => {
  for (const c of [anon, service]) {
    await c.removeAllChannels().catch(() => {});
    c.realtime.disconnect();
  }
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test('outbox events are broadcast to subscribers in commit order', async () => {
  const got = [];
  const channel = anon.channel('e2e-orders-feed');
  channel.on('broadcast', { event: 'e2e-orders' }, (message) => got.push(message.payload.n));
  const status = await new Promise((resolve) => {
    channel.subscribe((s) => {
      if (s === 'SUBSCRIBED' || s === 'CHANNEL_ERROR' || s === 'TIMED_OUT') resolve(s);
    });
  });
  assert.equal(status, 'SUBSCRIBED');
  for (let n = 1; n <= 5; n++) {
    const { data, error } = await service.rpc('outbox_order', { n });
    assert.equal(error, null);
    assert.equal(typeof data, 'number');
  }
  const end = Date.now() + 20000;
  while (got.length < 5 && Date.now() < end) await sleep(25);
  assert.deepEqual(got, [1, 2, 3, 4, 5]);
  // The anon role may not send events itself.
  const refused = await anon.rpc('outbox_order', { n: 6 });
  assert.equal(refused.error?.code, '42501');
});
