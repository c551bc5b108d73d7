// Realtime through the real supabase-js client (realtime-js, vsn 2.0.0 with
// binary broadcast frames), against the running sovra binary that run.sh
// started with fixture.sql loaded: broadcast between clients, presence,
// postgres_changes under RLS for rows written through /rest/v1 (with the
// filter builder's pattern operators and select lists), private channels
// authorised by policies on realtime.messages, broadcast replay, and the
// replication_ready message.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import { postgresChangesFilter } from '@supabase/realtime-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;

const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
// Every client made here is disconnected at the end, whatever failed, so
// that no open socket keeps node from exiting.
const made = [];
const client = () => {
  const c = createClient(url, anonKey, opts);
  made.push(c);
  return c;
};
const service = createClient(url, serviceKey, opts);
made.push(service);
after(async () => {
  for (const c of made) {
    await c.removeAllChannels().catch(() => {});
    c.realtime.disconnect();
  }
});
const short = () => randomUUID().slice(0, 8);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Resolves with the subscribe() status once it is final.
function subscribed(channel) {
  return new Promise((resolve) => {
    channel.subscribe((status, err) => {
      if (status === 'SUBSCRIBED' || status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') resolve({ status, err });
    });
  });
}

// Waits until `predicate()` holds (polling), or fails after `ms`.
async function until(predicate, what, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (predicate()) return;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
}

async function signedIn(tag) {
  const email = `${tag}-${short()}@example.com`;
  const made = await service.auth.admin.createUser({ email, password: 'password1', email_confirm: true });
  assert.equal(made.error, null);
  const c = client();
  const { data, error } = await c.auth.signInWithPassword({ email, password: 'password1' });
  assert.equal(error, null);
  c.realtime.setAuth(data.session.access_token);
  return { c, id: data.user.id };
}

test('two clients exchange broadcasts (self, ack, HTTP send)', async () => {
  const room = `room-${short()}`;
  const a = client();
  const b = client();
  const got = { a: [], b: [] };
  const ca = a.channel(room, { config: { broadcast: { self: true, ack: true } } })
    .on('broadcast', { event: '*' }, (m) => got.a.push(m));
  const cb = b.channel(room).on('broadcast', { event: 'cursor' }, (m) => got.b.push(m));
  assert.equal((await subscribed(ca)).status, 'SUBSCRIBED');
  assert.equal((await subscribed(cb)).status, 'SUBSCRIBED');

  assert.equal(await ca.send({ type: 'broadcast', event: 'cursor', payload: { x: 1 } }), 'ok');
  await until(() => got.b.length === 1 && got.a.length === 1, 'both hear the cursor');
  assert.deepEqual(got.b[0].payload, { x: 1 });
  assert.equal(got.b[0].event, 'cursor');

  // Sent from the server with the service key, over HTTP.
  const other = service.channel(room);
  assert.equal(await other.httpSend('cursor', { x: 2 }).then(() => 'ok', (e) => String(e)), 'ok');
  await until(() => got.b.length === 2, 'the HTTP broadcast');
  assert.deepEqual(got.b[1].payload, { x: 2 });

  await a.removeAllChannels();
  await b.removeAllChannels();
  await service.removeAllChannels();
});

test('presence syncs between clients and leaves when one goes', async () => {
  const room = `lobby-${short()}`;
  const a = client();
  const b = client();
  const ca = a.channel(room, { config: { presence: { key: 'alice' } } });
  ca.on('presence', { event: 'sync' }, () => {});
  const cb = b.channel(room, { config: { presence: { key: 'bob' } } });
  const leaves = [];
  cb.on('presence', { event: 'sync' }, () => {}).on('presence', { event: 'leave' }, ({ key }) => leaves.push(key));
  assert.equal((await subscribed(ca)).status, 'SUBSCRIBED');
  assert.equal((await subscribed(cb)).status, 'SUBSCRIBED');
  assert.equal(await ca.track({ online_at: 'now', name: 'Alice' }), 'ok');
  assert.equal(await cb.track({ name: 'Bob' }), 'ok');
  await until(() => cb.presenceState().alice && ca.presenceState().bob, 'both presences');
  assert.equal(cb.presenceState().alice[0].name, 'Alice');
  assert.ok(cb.presenceState().alice[0].presence_ref);

  await a.removeChannel(ca);
  await until(() => leaves.includes('alice'), 'alice leaving');
  assert.equal(cb.presenceState().alice, undefined);
  await b.removeAllChannels();
});

test('postgres_changes: rows written through /rest/v1 reach their owner and nobody else', async () => {
  const alice = await signedIn('rt-alice');
  const bob = await signedIn('rt-bob');
  const seen = { alice: [], bob: [] };
  const ca = alice.c.channel(`notes-${short()}`)
    .on('postgres_changes', { event: '*', schema: 'public', table: 'rt_notes' }, (p) => seen.alice.push(p));
  const cb = bob.c.channel(`notes-${short()}`)
    .on('postgres_changes', { event: '*', schema: 'public', table: 'rt_notes' }, (p) => seen.bob.push(p));
  assert.equal((await subscribed(ca)).status, 'SUBSCRIBED');
  assert.equal((await subscribed(cb)).status, 'SUBSCRIBED');
  // The feed may still be creating its slot on a fresh server: wait until a
  // probe row of Bob's comes through before measuring.
  const probe = await bob.c.from('rt_notes').insert({ body: 'probe' }).select().single();
  assert.equal(probe.error, null);
  await until(() => seen.bob.some((p) => p.new.body === 'probe'), 'the change feed', 20000);

  const inserted = await alice.c.from('rt_notes').insert({ body: 'hello' }).select().single();
  assert.equal(inserted.error, null);
  const id = inserted.data.id;
  assert.equal((await alice.c.from('rt_notes').update({ body: 'edited' }).eq('id', id)).error, null);
  assert.equal((await alice.c.from('rt_notes').delete().eq('id', id)).error, null);
  await until(() => seen.alice.length >= 3, () => `insert, update and delete (saw ${JSON.stringify(seen.alice)})`);
  assert.deepEqual(seen.alice.map((p) => p.eventType), ['INSERT', 'UPDATE', 'DELETE']);
  assert.equal(seen.alice[0].new.body, 'hello');
  assert.equal(seen.alice[0].new.id, id, 'int8 arrives as a number');
  assert.equal(seen.alice[0].new.owner_id, alice.id);
  assert.equal(seen.alice[1].new.body, 'edited');
  // Under RLS the old row carries only its key, as on Supabase.
  assert.deepEqual(seen.alice[1].old, { id });
  assert.equal(seen.alice[2].old.id, id);
  assert.equal(seen.alice[0].schema, 'public');
  assert.equal(seen.alice[0].table, 'rt_notes');
  assert.ok(!Number.isNaN(Date.parse(seen.alice[0].commit_timestamp)));

  await sleep(500);
  assert.deepEqual(seen.bob.map((p) => p.new?.body ?? p.old?.id), ['probe'], 'bob only ever sees his own row');
  await alice.c.removeAllChannels();
  await bob.c.removeAllChannels();
});

test('private channels: the policy lets its user in and keeps others out', async () => {
  const alice = await signedIn('rt-priv-a');
  const bob = await signedIn('rt-priv-b');
  const topic = `secret:${alice.id}`;
  const heard = [];
  const ca = alice.c.channel(topic, { config: { private: true, broadcast: { self: true, ack: true } } })
    .on('broadcast', { event: 'note' }, (m) => heard.push(m.payload));
  assert.equal((await subscribed(ca)).status, 'SUBSCRIBED');
  assert.equal(await ca.send({ type: 'broadcast', event: 'note', payload: { n: 1 } }), 'ok');
  await until(() => heard.length === 1, 'alice hearing her own note');

  const cb = bob.c.channel(topic, { config: { private: true } });
  const refused = await subscribed(cb);
  assert.equal(refused.status, 'CHANNEL_ERROR');
  assert.match(String(refused.err?.message ?? refused.err), /Unauthorized/);
  await bob.c.removeAllChannels();
  await alice.c.removeAllChannels();
});

test('catch-up: a client that rejoins with since gets what it missed', async () => {
  const alice = await signedIn('rt-catch');
  const seen = [];
  const topic = `catch-${short()}`;
  const first = alice.c.channel(topic)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'rt_notes' }, (p) => seen.push(p));
  assert.equal((await subscribed(first)).status, 'SUBSCRIBED');
  const probe = await alice.c.from('rt_notes').insert({ body: 'before' }).select().single();
  assert.equal(probe.error, null);
  await until(() => seen.some((p) => p.new.body === 'before'), 'the first change', 20000);
  const since = seen.at(-1).commit_timestamp;
  await alice.c.removeChannel(first);

  for (const body of ['away-1', 'away-2']) {
    assert.equal((await alice.c.from('rt_notes').insert({ body })).error, null);
  }
  await sleep(500); // delivered (to nobody) and kept for catch-up

  const again = [];
  const system = [];
  const second = alice.c.channel(topic)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'rt_notes', since }, (p) => again.push(p))
    .on('system', {}, (m) => system.push(m));
  assert.equal((await subscribed(second)).status, 'SUBSCRIBED');
  await until(() => again.filter((p) => p.new.body.startsWith('away')).length === 2, () => `the missed rows (got ${JSON.stringify(again)})`);
  assert.deepEqual(again.filter((p) => p.new.body !== 'before').map((p) => p.new.body), ['away-1', 'away-2']);
  await until(() => system.some((m) => /^Caught up on/.test(m.message)), 'the caught-up message');
  await alice.c.removeAllChannels();
});

test('two instances joined by nats-server: broadcast, presence and database changes cross', async () => {
  const url2 = process.env.E2E_SECOND_URL;
  assert.ok(url2, 'run.sh starts a second instance and sets E2E_SECOND_URL');
  const onTwo = (key) => {
    const c = createClient(url2, key, opts);
    made.push(c);
    return c;
  };
  const room = `cluster-${short()}`;
  const a = client();
  const b = onTwo(anonKey);
  const heard = [];
  const ca = a.channel(room, { config: { presence: { key: 'one' } } });
  ca.on('presence', { event: 'sync' }, () => {});
  const cb = b.channel(room, { config: { presence: { key: 'two' } } })
    .on('broadcast', { event: 'hello' }, (m) => heard.push(m.payload));
  cb.on('presence', { event: 'sync' }, () => {});
  assert.equal((await subscribed(ca)).status, 'SUBSCRIBED');
  assert.equal((await subscribed(cb)).status, 'SUBSCRIBED');
  assert.equal(await ca.track({ where: 'one' }), 'ok');
  assert.equal(await cb.track({ where: 'two' }), 'ok');
  await until(() => cb.presenceState().one && ca.presenceState().two, 'presence across instances');
  assert.equal(cb.presenceState().one[0].where, 'one');
  assert.equal(await ca.send({ type: 'broadcast', event: 'hello', payload: { from: 'one' } }), 'ok');
  await until(() => heard.length === 1, 'the broadcast on the other instance');
  assert.deepEqual(heard[0], { from: 'one' });
  await a.removeChannel(ca);
  await until(() => !cb.presenceState().one, 'the leave on the other instance');

  // Rows written through instance one reach their owner on instance two.
  const alice = await signedIn('rt-cl-a');
  const bob = await signedIn('rt-cl-b');
  const aliceTwo = onTwo(anonKey);
  aliceTwo.realtime.setAuth((await alice.c.auth.getSession()).data.session.access_token);
  const bobTwo = onTwo(anonKey);
  bobTwo.realtime.setAuth((await bob.c.auth.getSession()).data.session.access_token);
  const seen = { alice: [], bob: [] };
  const c1 = aliceTwo.channel(`cl-${short()}`)
    .on('postgres_changes', { event: '*', schema: 'public', table: 'rt_notes' }, (p) => seen.alice.push(p));
  const c2 = bobTwo.channel(`cl-${short()}`)
    .on('postgres_changes', { event: '*', schema: 'public', table: 'rt_notes' }, (p) => seen.bob.push(p));
  assert.equal((await subscribed(c1)).status, 'SUBSCRIBED');
  assert.equal((await subscribed(c2)).status, 'SUBSCRIBED');
  const row = await alice.c.from('rt_notes').insert({ body: 'across' }).select().single();
  assert.equal(row.error, null);
  await until(() => seen.alice.some((p) => p.new.body === 'across'), 'the change on the other instance', 20000);
  assert.equal(seen.alice.find((p) => p.new.body === 'across').eventType, 'INSERT');
  await sleep(500);
  assert.equal(seen.bob.length, 0, 'bob sees nothing of alice');
  await aliceTwo.removeAllChannels();
  await bobTwo.removeAllChannels();
  await b.removeAllChannels();
});

test('postgres_changes: pattern filters from postgresChangesFilter() and select lists', async () => {
  const alice = await signedIn('rt-filter');
  const seen = { like: [], distinct: [], select: [], bad: [] };
  const system = [];
  const ch = alice.c.channel(`filters-${short()}`)
    .on('postgres_changes', {
      event: 'INSERT', schema: 'public', table: 'rt_notes',
      filter: postgresChangesFilter().ilike('body', 'HELLO%').not('body', 'match', 'x$'),
    }, (p) => seen.like.push(p.new.body))
    .on('postgres_changes', {
      event: 'INSERT', schema: 'public', table: 'rt_notes',
      filter: postgresChangesFilter().isDistinct('body', 'hello, "world"'),
    }, (p) => seen.distinct.push(p.new.body));
  assert.equal((await subscribed(ch)).status, 'SUBSCRIBED');
  // On a channel of its own: a change that several bindings of one channel
  // want carries the columns of all of them.
  const chs = alice.c.channel(`filters-select-${short()}`)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'rt_notes', select: ['id', 'body'] },
      (p) => seen.select.push(p.new));
  assert.equal((await subscribed(chs)).status, 'SUBSCRIBED');
  // A filter the server cannot read: the join succeeds, a system error says why.
  const bad = alice.c.channel(`filters-bad-${short()}`)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'rt_notes', filter: 'body=match.(' },
      (p) => seen.bad.push(p))
    .on('system', {}, (m) => system.push(m));
  assert.equal((await subscribed(bad)).status, 'SUBSCRIBED');
  await until(() => system.some((m) => m.status === 'error'), 'the filter error');
  assert.match(system.find((m) => m.status === 'error').message, /^Error parsing `filter` params: invalid regular expression for match/);

  const probe = await alice.c.from('rt_notes').insert({ body: 'probe' }).select().single();
  assert.equal(probe.error, null);
  await until(() => seen.select.some((r) => r.body === 'probe'), 'the change feed', 20000);
  for (const body of ['Hello there', 'hello, "world"', 'hello box', 'bye']) {
    assert.equal((await alice.c.from('rt_notes').insert({ body })).error, null);
  }
  await until(() => seen.select.some((r) => r.body === 'bye'), 'the last row');
  assert.deepEqual(seen.like, ['Hello there', 'hello, "world"']);
  assert.deepEqual(seen.distinct, ['probe', 'Hello there', 'hello box', 'bye']);
  // Only the selected columns, never owner_id.
  assert.deepEqual(Object.keys(seen.select.at(-1)).sort(), ['body', 'id']);
  assert.deepEqual(seen.bad, []);
  await alice.c.removeAllChannels();
});

test('replication_ready: a channel that asks is told when changes flow', async () => {
  const c = client();
  const system = [];
  const ch = c.channel(`ready-${short()}`, { config: { broadcast: { replication_ready: true } } })
    .on('system', {}, (m) => system.push(m));
  assert.equal((await subscribed(ch)).status, 'SUBSCRIBED');
  await until(() => system.length > 0, 'the replication_ready message');
  assert.equal(system[0].extension, 'system');
  assert.equal(system[0].status, 'ok');
  assert.equal(system[0].message, 'Replication connection established');
  await c.removeAllChannels();
});

test('broadcast replay: a private channel gets the latest messages sent from SQL, marked replayed', async () => {
  const alice = await signedIn('rt-replay');
  const topic = `secret:${alice.id}`;
  const since = Date.now() - 60000;
  // Sent while alice listens, so that all three have been delivered before
  // the replaying channel joins (else the oldest would also come live).
  const live = [];
  const watch = alice.c.channel(topic, { config: { private: true } })
    .on('broadcast', { event: 'note' }, (m) => live.push(m.payload.n));
  assert.equal((await subscribed(watch)).status, 'SUBSCRIBED');
  for (const n of [1, 2, 3]) {
    assert.equal((await service.rpc('rt_send', { topic, n })).error, null);
  }
  await until(() => live.length === 3, 'the three messages live', 20000);
  assert.deepEqual(live, [1, 2, 3]);
  await alice.c.removeChannel(watch);
  const heard = [];
  const bins = [];
  const ch = alice.c.channel(topic, { config: { private: true, broadcast: { replay: { since, limit: 2 } } } })
    .on('broadcast', { event: 'note' }, (m) => heard.push(m))
    .on('broadcast', { event: 'bin' }, (m) => bins.push(m));
  assert.equal((await subscribed(ch)).status, 'SUBSCRIBED');
  await until(() => heard.length === 2, () => `two replayed messages (got ${JSON.stringify(heard)})`);
  assert.deepEqual(heard.map((m) => m.payload.n), [2, 3]);
  for (const m of heard) {
    assert.equal(m.meta.replayed, true);
    assert.equal(typeof m.meta.id, 'string');
  }
  // Live messages follow, not marked replayed; raw bytes from send_binary.
  assert.equal((await service.rpc('rt_send', { topic, n: 4 })).error, null);
  await until(() => heard.length === 3, 'the live message');
  assert.equal(heard[2].payload.n, 4);
  assert.equal(heard[2].meta?.replayed, undefined);
  assert.equal((await service.rpc('rt_send_binary', { topic })).error, null);
  await until(() => bins.length === 1, 'the binary message');
  assert.deepEqual([...new Uint8Array(bins[0].payload)], [1, 2]);

  // Someone else may not replay alice's channel.
  const bob = await signedIn('rt-replay-b');
  const refused = await subscribed(bob.c.channel(topic, { config: { private: true, broadcast: { replay: { since } } } }));
  assert.equal(refused.status, 'CHANNEL_ERROR');
  assert.match(String(refused.err?.message ?? refused.err), /Unauthorized/);
  await bob.c.removeAllChannels();
  await alice.c.removeAllChannels();
});
