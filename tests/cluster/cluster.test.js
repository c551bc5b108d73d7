// The cluster test (#21): three sovra nodes on one PostgreSQL, NATS and S3
// store, behind HAProxy (run.sh starts them all). With the real supabase-js
// client spread over the nodes: accounts, rate limits, realtime and storage
// cross nodes; then, under steady writes and realtime subscribers, the node
// consuming the change feed is killed with SIGKILL and restarted; then
// NATS itself is killed and restarted; then the node consuming the feed is
// cut from NATS for 10 s (its own proxy to NATS closes), and a client
// catches up with since on the restarted node (from the JetStream stream).
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const lb = process.env.CLUSTER_LB_URL;
const nodes = process.env.CLUSTER_NODE_URLS.split(',');
const dir = process.env.CLUSTER_DIR;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;

// Every realtime socket the clients open, so that the end of the run can
// close what a client left open (the process must exit when done).
const sockets = new Set();
class TrackedSocket extends ws {
  constructor(...args) {
    super(...args);
    sockets.add(this);
    this.on('close', () => sockets.delete(this));
  }
}
const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: TrackedSocket } };
const made = [];
let closing = false;
const client = (url, key = anonKey, extra = {}) => {
  const c = createClient(url, key, { ...opts, ...extra });
  made.push(c);
  return c;
};
after(async () => {
  closing = true;
  for (const c of made) {
    // A channel whose node does not answer (a failed test) holds no one up.
    await Promise.race([c.removeAllChannels().catch(() => {}), sleep(2000)]);
    await Promise.race([Promise.resolve(c.realtime.disconnect()).catch(() => {}), sleep(2000)]);
  }
  // A socket a client still holds (one that was connecting when it was
  // told to disconnect) would keep the process alive after the last test.
  for (const socket of sockets) socket.terminate();
  // And should anything else still hold the event loop, the results are
  // all reported by now: end the process rather than hang the run.
  setTimeout(() => {
    console.log(`cluster: a handle was still open after the tests (${sockets.size} sockets); exiting`);
    process.exit(process.exitCode ?? 0);
  }, 5000).unref();
});
const short = () => randomUUID().slice(0, 8);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(check, what, ms = 20000) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}
function subscribed(channel) {
  return new Promise((resolve) => {
    channel.subscribe((status, err) => {
      if (status !== 'SUBSCRIBED' && status !== 'CHANNEL_ERROR' && status !== 'TIMED_OUT') return;
      resolve({ status, err });
    });
  });
}
async function signedUp(url, prefix) {
  const email = `${prefix}-${short()}@example.com`;
  const c = client(url);
  const { data, error } = await c.auth.signUp({ email, password: 'cluster-password-1' });
  assert.equal(error, null);
  assert.ok(data.session, 'auto-confirmed sign-ups get a session');
  return { c, email, user: data.user, session: data.session };
}

test('accounts: sign up on one node, sign in on another, refresh on the third', async () => {
  const { email, user } = await signedUp(nodes[0], 'acct');
  const two = client(nodes[1]);
  const signedIn = await two.auth.signInWithPassword({ email, password: 'cluster-password-1' });
  assert.equal(signedIn.error, null);
  assert.equal(signedIn.data.user.id, user.id);
  const three = client(nodes[2]);
  const refreshed = await three.auth.refreshSession({ refresh_token: signedIn.data.session.refresh_token });
  assert.equal(refreshed.error, null);
  assert.equal(refreshed.data.user.id, user.id);
  // The rotated token is spent on every node: reusing it on node one fails.
  const reuse = await client(nodes[0]).auth.refreshSession({ refresh_token: signedIn.data.session.refresh_token });
  const { data: got } = await client(lb).auth.getUser(refreshed.data.session.access_token);
  assert.equal(got.user.email, email);
  // (Reuse within the reuse interval may answer the live child; past it,
  // it fails. Either way no second, independent session appears.)
  if (!reuse.error) assert.equal(reuse.data.user.id, user.id);
});

test('rate limits: N requests spread over three nodes meet a limit of N', async () => {
  // auth.rate_limit.verify is 9 per hour on every node (run.sh); this
  // client's address comes through the trusted proxy header.
  const from = { global: { headers: { 'x-forwarded-for': `198.51.100.${10 + Math.floor(Math.random() * 200)}` } } };
  const clients = nodes.map((url) => client(url, anonKey, from));
  const statuses = [];
  for (let i = 0; i < 9; i++) {
    const { error } = await clients[i % 3].auth.verifyOtp({ token_hash: '0'.repeat(56), type: 'magiclink' });
    statuses.push(error?.status);
  }
  assert.deepEqual(statuses, Array(9).fill(403), 'nine verifications of an unknown code are answered');
  for (const c of clients) {
    const { error } = await c.auth.verifyOtp({ token_hash: '0'.repeat(56), type: 'magiclink' });
    assert.equal(error?.status, 429, 'the tenth, on any node, is over the limit');
    assert.equal(error.code, 'over_request_rate_limit');
  }
  // Another client is not affected.
  const other = client(nodes[1], anonKey, { global: { headers: { 'x-forwarded-for': '203.0.113.250' } } });
  const { error } = await other.auth.verifyOtp({ token_hash: '0'.repeat(56), type: 'magiclink' });
  assert.equal(error?.status, 403);
});

test('realtime: broadcast, presence and database changes cross nodes', async () => {
  const room = `cluster-${short()}`;
  const a = client(nodes[0]);
  const b = client(nodes[1]);
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
  await until(() => cb.presenceState().one && ca.presenceState().two, 'presence across nodes');
  assert.equal(await ca.send({ type: 'broadcast', event: 'hello', payload: { from: 'one' } }), 'ok');
  await until(() => heard.length === 1, 'the broadcast on the other node');
  assert.deepEqual(heard[0], { from: 'one' });
  // From the HTTP API of the third node.
  const sent = await client(nodes[2], serviceKey).channel(room).httpSend('hello', { from: 'three' });
  assert.equal(sent.success, true, JSON.stringify(sent));
  await until(() => heard.length === 2, 'the HTTP broadcast from the third node');

  // A note written on node one reaches its owner on node three, and not
  // another user on node two.
  const alice = await signedUp(nodes[0], 'rt-a');
  const bob = await signedUp(nodes[0], 'rt-b');
  const aliceThree = client(nodes[2]);
  await aliceThree.realtime.setAuth(alice.session.access_token);
  const bobTwo = client(nodes[1]);
  await bobTwo.realtime.setAuth(bob.session.access_token);
  const toAlice = [];
  const toBob = [];
  const cha = aliceThree.channel(`notes-${short()}`)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'cluster_notes' }, (p) => toAlice.push(p.new));
  const chb = bobTwo.channel(`notes-${short()}`)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'cluster_notes' }, (p) => toBob.push(p.new));
  assert.equal((await subscribed(cha)).status, 'SUBSCRIBED');
  assert.equal((await subscribed(chb)).status, 'SUBSCRIBED');
  await sleep(500);
  const { error: inserted } = await alice.c.from('cluster_notes').insert({ body: 'from node one' });
  assert.equal(inserted, null);
  const { error: bobs } = await bob.c.from('cluster_notes').insert({ body: 'bob on node one' });
  assert.equal(bobs, null);
  await until(() => toAlice.length === 1 && toBob.length === 1, 'each owner hears their own note');
  assert.equal(toAlice[0].body, 'from node one');
  assert.equal(toBob[0].body, 'bob on node one');
  await sleep(300);
  assert.equal(toAlice.length, 1, "alice never hears bob's note");
  assert.equal(toBob.length, 1, "bob never hears alice's note");
});

test('storage: upload on one node, download from the others', async () => {
  const { c, user } = await signedUp(nodes[0], 'files');
  const path = `${user.id}/hello-${short()}.txt`;
  const body = `cluster ${randomUUID()}`;
  const { error } = await c.storage.from('cluster').upload(path, new Blob([body], { type: 'text/plain' }));
  assert.equal(error, null);
  for (const url of [nodes[1], nodes[2], lb]) {
    const other = client(url);
    await other.auth.setSession(await c.auth.getSession().then((s) => s.data.session));
    const { data, error: down } = await other.storage.from('cluster').download(path);
    assert.equal(down, null, url);
    assert.equal(await data.text(), body);
  }
  const { data: signed } = await client(nodes[2], serviceKey).storage.from('cluster').createSignedUrl(path, 60);
  const fetched = await fetch(signed.signedUrl.replace(nodes[2], nodes[1]));
  assert.equal(fetched.status, 200);
  assert.equal(await fetched.text(), body);
});

// The node whose change feed streams (sovra_realtime_feed_streaming 1).
async function feedNode() {
  for (let i = 0; i < 3; i++) {
    const text = await fetch(`${nodes[i]}/metrics`).then((r) => r.text()).catch(() => '');
    if (/^sovra_realtime_feed_streaming(\{[^}]*\})? 1$/m.test(text)) return i;
  }
  return -1;
}

// A subscriber to cluster_events that, whenever its channel errors or
// closes (its node went away), connects again through `url` and rejoins
// with `since` = the last commit_timestamp it saw.
function subscriber(url, name) {
  const s = { name, seen: new Map(), last: null, joins: 0, ready: false, stopped: false, errors: [], dups: 0 };
  const start = () => {
    if (closing) return;
    const c = client(url);
    s.joins += 1;
    const binding = { event: 'INSERT', schema: 'public', table: 'cluster_events', ...(s.last && { since: s.last }) };
    const ch = c.channel(`events-${name}-${s.joins}`)
      .on('postgres_changes', binding, (p) => {
        if (!s.seen.has(p.new.id)) s.seen.set(p.new.id, Date.now()); else s.dups += 1;
        if (!s.last || p.commit_timestamp > s.last) s.last = p.commit_timestamp;
      })
      .on('system', {}, (m) => { if (m.status === 'error') s.errors.push(m.message); });
    let live = true;
    ch.subscribe((status) => {
      if (status === 'SUBSCRIBED') { s.ready = true; return; }
      if (s.stopped || !live) return;
      live = false;
      c.removeAllChannels().catch(() => {});
      c.realtime.disconnect();
      setTimeout(start, 200);
    });
  };
  start();
  return s;
}

// Two writers inserting into cluster_events through `admin` until stopped,
// ids from `base` + 1 and + 2 upwards; a write is acknowledged when it
// answered 201 (a failed one is not retried: it may or may not have
// committed).
function writers(admin, base, tag) {
  const w = { acked: new Map(), failed: 0, writing: true };
  const one = async (k) => {
    for (let id = base + k; w.writing; id += 2) {
      const { error } = await admin.from('cluster_events').insert({ id, writer: `${tag}${k}` });
      if (error) w.failed += 1; else w.acked.set(id, Date.now());
      await sleep(10);
    }
  };
  const running = [one(1), one(2)];
  w.stop = async () => { w.writing = false; await Promise.all(running); };
  return w;
}

// The ids of cluster_events in [lo, hi), read through `admin` a page at a
// time: a read returns at most rest.max_rows (1,000) rows.
async function eventIds(admin, lo, hi) {
  const rows = [];
  for (let from = lo; ;) {
    const { data, error } = await admin.from('cluster_events').select('id').gte('id', from).lt('id', hi).order('id').limit(1000);
    assert.equal(error, null);
    rows.push(...data);
    if (data.length < 1000) return rows;
    from = Number(data[data.length - 1].id) + 1;
  }
}

// What the kill test leaves for the catch-up from the stream: the node it
// restarted, a commit_timestamp seen before the kill, and the writes
// acknowledged after that timestamp was seen.
const killed = { victim: -1, since: null, after: [] };

test('failure: kill -9 the feed node under load, restart it; nothing acknowledged is lost or missed', async () => {
  const admin = client(lb, serviceKey);
  // A cron job every 2 seconds, run by whichever node ticks first.
  const psql = (sql) => spawnSync('psql', [process.env.CLUSTER_DB, '-tAc', sql], { encoding: 'utf8' });
  const scheduled = psql("select cron.schedule('cluster-tick', '2 seconds', 'insert into public.cluster_ticks default values')");
  assert.equal(scheduled.status, 0, scheduled.stderr);

  const subs = [
    subscriber(lb, 'lb1'), subscriber(lb, 'lb2'), subscriber(lb, 'lb3'),
    subscriber(nodes[1], 'n2'), subscriber(nodes[2], 'n3'),
  ];
  await until(() => subs.every((s) => s.ready), 'every subscriber joined');
  await sleep(500);

  // Two writers through the balancer.
  const w = writers(admin, 0, 'w');
  const { acked } = w;
  await until(() => subs.every((s) => s.seen.size >= 5), 'every subscriber hears the writes');

  const victim = await feedNode();
  assert.ok(victim >= 0, 'one node streams the change feed');
  const sinceSeen = subs[3].last;
  const sinceSeenAt = Date.now();
  const pid = Number(readFileSync(`${dir}/node-${victim + 1}.pid`, 'utf8'));
  const killedAt = Date.now();
  process.kill(pid, 'SIGKILL');
  // Another node takes the feed over.
  await until(async () => { const n = await feedNode(); return n >= 0 && n !== victim; }, 'another node streaming the feed');
  const tookOver = await feedNode();
  await sleep(2000);
  // Restart it; it rejoins the cluster.
  const restarted = spawnSync('bash', [`${dir}/node-${victim + 1}.sh`]);
  assert.equal(restarted.status, 0);
  await until(() => fetch(`${nodes[victim]}/ready`).then((r) => r.ok).catch(() => false), 'the restarted node ready', 60000);
  await sleep(3000);
  await w.stop();

  // Every acknowledged write is in the database.
  const rows = await eventIds(admin, 0, 1_000_000);
  const stored = new Set(rows.map((r) => Number(r.id)));
  const lost = [...acked.keys()].filter((id) => !stored.has(id));
  assert.deepEqual(lost, [], 'acknowledged writes lost');

  // Every subscriber hears every acknowledged write (and nothing that was
  // not committed).
  const lastAck = Math.max(...acked.keys());
  await until(() => subs.every((s) => [...acked.keys()].every((id) => s.seen.has(id))), 'every subscriber caught up', 30000)
    .catch(() => {});
  for (const s of subs) {
    const missing = [...acked.keys()].filter((id) => !s.seen.has(id));
    assert.deepEqual(missing, [], `${s.name} (${s.joins} joins, errors ${JSON.stringify(s.errors)}) missed acknowledged changes`);
    const phantom = [...s.seen.keys()].filter((id) => !stored.has(Number(id)));
    assert.deepEqual(phantom, [], `${s.name} heard changes that were not committed`);
  }
  // The feed's takeover: the first change committed after the kill that
  // reached a subscriber on a surviving node, counted from the kill.
  const survivors = subs.filter((s) => s.name === `n${tookOver + 1}` || (s.name.startsWith('n') && s.name !== `n${victim + 1}`));
  const firstAfter = Math.min(...survivors.flatMap((s) => [...s.seen].filter(([id]) => (acked.get(id) ?? 0) > killedAt).map(([, at]) => at)));
  const reconnected = subs.filter((s) => s.joins > 1).map((s) => s.name);
  console.log(`cluster failure: ${acked.size} writes acknowledged (last id ${lastAck}), ${w.failed} failed while the node was down; ` +
    `feed node ${victim + 1} killed, node ${tookOver + 1} streamed next; first change after the kill delivered ${firstAfter - killedAt} ms after it; ` +
    `subscribers that reconnected: ${reconnected.join(', ') || 'none'}`);
  assert.ok(Number.isFinite(firstAfter), 'changes committed after the kill reached the surviving nodes');
  Object.assign(killed, { victim, since: sinceSeen, after: [...acked].filter(([, at]) => at > sinceSeenAt).map(([id]) => id) });

  // The job runs on after the kill, on whichever node ticks: two runs after
  // it (waited for, not assumed: a fast takeover can leave this test under
  // three ticks long).
  await until(async () => {
    await sleep(450);
    const after = psql(`select count(*) from public.cluster_ticks where at > to_timestamp(${killedAt / 1000})`);
    return after.status === 0 && Number(after.stdout.trim()) >= 2;
  }, 'two cron runs after the kill', 30000);
  // No duplicate cron runs: one row per 2-second tick, across nodes and the
  // restart.
  const unscheduled = psql("select cron.unschedule('cluster-tick')");
  assert.equal(unscheduled.status, 0, unscheduled.stderr);
  const dup = psql(`select count(*) - count(distinct floor(extract(epoch from at) / 2)) from public.cluster_ticks`);
  assert.equal(dup.status, 0, dup.stderr);
  const ticks = psql('select count(*) from public.cluster_ticks').stdout.trim();
  assert.ok(Number(ticks) >= 3, `the job ran (${ticks} runs)`);
  assert.equal(dup.stdout.trim(), '0', 'two runs of one tick');
  for (const s of subs) s.stopped = true;
});

test('NATS restart: the bus resumes, and a change committed while NATS was down reaches every node', async () => {
  // A subscriber on each node, joined before NATS goes away.
  const heard = nodes.map(() => []);
  const last = nodes.map(() => null);
  for (const [i, url] of nodes.entries()) {
    const ch = client(url).channel(`nats-${short()}`)
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'cluster_events' }, (p) => {
        heard[i].push(Number(p.new.id));
        last[i] = p.commit_timestamp;
      });
    assert.equal((await subscribed(ch)).status, 'SUBSCRIBED');
  }
  const admin = client(nodes[1], serviceKey);
  const before = 2_000_000 + Math.floor(Math.random() * 1_000_000);
  assert.equal((await admin.from('cluster_events').insert({ id: before, writer: 'nats-up' })).error, null);
  await until(() => heard.every((h) => h.includes(before)), 'a change on every node before the restart');
  const since = last.map((t) => t);

  const natsPid = Number(readFileSync(`${dir}/nats.pid`, 'utf8'));
  process.kill(natsPid, 'SIGKILL');
  await until(() => { try { process.kill(natsPid, 0); return false; } catch { return true; } }, 'nats-server gone');
  const during = before + 1;
  assert.equal((await admin.from('cluster_events').insert({ id: during, writer: 'nats-down' })).error, null);
  await sleep(2000);
  const restarted = spawnSync('bash', [`${dir}/nats.sh`]);
  assert.equal(restarted.status, 0);

  // Broadcast crosses nodes again (the nodes reconnected and subscribed).
  const room = `after-nats-${short()}`;
  const got = [];
  const ca = client(nodes[0]).channel(room);
  const cb = client(nodes[2]).channel(room).on('broadcast', { event: 'ping' }, (m) => got.push(m.payload));
  assert.equal((await subscribed(ca)).status, 'SUBSCRIBED');
  assert.equal((await subscribed(cb)).status, 'SUBSCRIBED');
  await until(async () => {
    await ca.send({ type: 'broadcast', event: 'ping', payload: { n: got.length } });
    await sleep(200);
    return got.length > 0;
  }, 'a broadcast from node one heard on node three', 30000);
  // A change committed now reaches every node live.
  const afterId = during + 1;
  assert.equal((await admin.from('cluster_events').insert({ id: afterId, writer: 'nats-back' })).error, null);
  await until(() => heard.every((h) => h.includes(afterId)), 'a change on every node after the restart', 30000);

  // The change committed while NATS was down reaches every node too: the
  // feed node stored it on the JetStream stream once NATS was back, and
  // every node resumed reading the stream after the last batch it had.
  await until(() => heard.every((h) => h.includes(during)), 'the change committed while NATS was down, on every node', 30000);
  for (const [i, h] of heard.entries()) assert.ok(h.includes(during), `node ${i + 1} got the change committed while NATS was down`);
  const order = heard.map((h) => h.indexOf(during) < h.indexOf(afterId));
  console.log(`cluster NATS restart: the change committed while NATS was down reached every node (before the next one: ${order.join(', ')})`);
  void since;
});

test('NATS cut: the feed node is cut from NATS for 10 s under load; nothing acknowledged is lost or missed', async () => {
  const admin = client(lb, serviceKey);
  const subs = [
    subscriber(nodes[0], 'cut-n1'), subscriber(nodes[1], 'cut-n2'), subscriber(nodes[2], 'cut-n3'),
    subscriber(lb, 'cut-lb'),
  ];
  await until(() => subs.every((s) => s.ready), 'every subscriber joined');
  await sleep(500);
  const w = writers(admin, 3_000_000, 'c');
  const { acked } = w;
  await until(() => subs.every((s) => s.seen.size >= 5), 'every subscriber hears the writes');

  // Cut the node streaming the feed: its proxy to NATS closes every
  // connection and refuses new ones for 10 s.
  const victim = await feedNode();
  assert.ok(victim >= 0, 'one node streams the change feed');
  const proxy = Number(readFileSync(`${dir}/nats-proxy-${victim + 1}.pid`, 'utf8'));
  const cutAt = Date.now();
  process.kill(proxy, 'SIGUSR2');
  // Another node takes the feed over while the cut lasts (the cut node
  // gives it up when NATS stops taking its batches).
  await until(async () => { const n = await feedNode(); return n >= 0 && n !== victim; }, 'another node streaming the feed during the cut', 10000);
  const tookOver = Date.now() - cutAt;
  const feed = await feedNode();
  await sleep(Math.max(0, 10000 - (Date.now() - cutAt)));
  process.kill(proxy, 'SIGHUP');
  const healedAt = Date.now();
  await sleep(3000);
  await w.stop();

  const rows = await eventIds(admin, 3_000_000, 4_000_000);
  const stored = new Set(rows.map((r) => Number(r.id)));
  const lost = [...acked.keys()].filter((id) => !stored.has(id));
  if (lost.length > 0) {
    // Tell a write that is not in the database from a read that missed it.
    const psql = (sql) => spawnSync('psql', [process.env.CLUSTER_DB, '-tAc', sql], { encoding: 'utf8' });
    const inDb = psql(`select count(*) from public.cluster_events where id in (${lost.join(',')})`).stdout.trim();
    const total = psql('select count(*) from public.cluster_events where id >= 3000000 and id < 4000000').stdout.trim();
    const when = lost.slice(0, 5).map((id) => acked.get(id) - cutAt);
    assert.fail(`${lost.length} of ${acked.size} acknowledged writes not read back through ${lb} (${rows.length} rows read); ` +
      `in the database: ${inDb} of them, ${total} rows in all; first ones acknowledged at ${when.join(', ')} ms from the cut (healed at ${healedAt - cutAt} ms): ${lost.slice(0, 20).join(', ')}`);
  }
  const during = [...acked].filter(([, at]) => at > cutAt && at < healedAt).length;
  assert.ok(during > 0, 'writes were acknowledged during the cut');
  await until(() => subs.every((s) => [...acked.keys()].every((id) => s.seen.has(id))), 'every subscriber caught up', 30000)
    .catch(() => {});
  for (const s of subs) {
    const missing = [...acked.keys()].filter((id) => !s.seen.has(id));
    assert.deepEqual(missing, [], `${s.name} (${s.joins} joins, errors ${JSON.stringify(s.errors)}) missed acknowledged changes`);
    const phantom = [...s.seen.keys()].filter((id) => Number(id) >= 3_000_000 && Number(id) < 4_000_000 && !stored.has(Number(id)));
    assert.deepEqual(phantom, [], `${s.name} heard changes that were not committed`);
  }
  const cutSub = subs[victim];
  const caughtUp = Math.max(...[...acked].filter(([, at]) => at > cutAt && at < healedAt).map(([id]) => cutSub.seen.get(id)));
  console.log(`cluster NATS cut: node ${victim + 1} (the feed node) cut for 10 s; node ${feed + 1} streamed the feed ${tookOver} ms after the cut (goal 5 s); ` +
    `${acked.size} writes acknowledged (${during} during the cut, ${w.failed} failed); the cut node's subscriber had every change of the cut ${caughtUp - healedAt} ms after the heal; ` +
    `duplicates delivered: ${subs.map((s) => `${s.name} ${s.dups}`).join(', ')}`);
  for (const s of subs) s.stopped = true;
});

test('catch-up from the stream: a rejoin with since on the restarted node replays what happened before it started', async () => {
  assert.ok(killed.victim >= 0 && killed.since, 'the kill test left a since');
  const caught = new Set();
  const errors = [];
  const oks = [];
  const ch = client(nodes[killed.victim]).channel(`stream-since-${short()}`)
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'cluster_events', since: killed.since }, (p) => caught.add(Number(p.new.id)))
    .on('system', {}, (m) => { if (m.status === 'error') errors.push(m.message); else if (/Caught up/.test(m.message ?? '')) oks.push(m.message); });
  assert.equal((await subscribed(ch)).status, 'SUBSCRIBED');
  const began = Date.now();
  await until(() => oks.length > 0 || errors.length > 0, 'the catch-up ends', 60000);
  const tookMs = Date.now() - began;
  assert.deepEqual(errors, [], 'the catch-up is complete');
  const missing = killed.after.filter((id) => !caught.has(id));
  assert.deepEqual(missing, [], 'changes committed before the node restarted, replayed from the stream');
  console.log(`cluster stream catch-up: node ${killed.victim + 1} replayed ${caught.size} changes since ${killed.since} in ${tookMs} ms (${oks[0]})`);
});
