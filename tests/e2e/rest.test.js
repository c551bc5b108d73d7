// The REST API through the real supabase-js client, against the running
// sovra binary that run.sh started with fixture.sql loaded.
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
const USER_B = '00000000-0000-0000-0000-00000000000b';

// Sign a user's access token with the project's active key (as the auth
// service does), for users that exist only in the fixture's rows.
function userToken(sub) {
  const { keys } = JSON.parse(readFileSync(process.env.SOVRA_KEYS_FILE, 'utf8'));
  const key = keys.find((k) => k.status === 'active');
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: 'HS256', typ: 'JWT', kid: key.kid });
  const body = b64({ sub, role: 'authenticated', aud: 'authenticated', email: `${sub}@example.com`, iat: now, exp: now + 3600 });
  const sig = createHmac('sha256', Buffer.from(key.secret, 'utf8')).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

// Node 20 has no WebSocket of its own; realtime-js needs one at construction.
const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const anon = createClient(url, anonKey, opts);
const service = createClient(url, serviceKey, opts);
const asUser = (sub) =>
  createClient(url, anonKey, { ...opts, global: { headers: { Authorization: `Bearer ${userToken(sub)}` } } });

test('anon sees only what its policy allows', async () => {
  const { data, error, status } = await anon.from('todos').select('task');
  assert.equal(error, null);
  assert.equal(status, 200);
  assert.deepEqual(data, [{ task: 'public:read me' }]);
});

test('each user sees only their own rows; service_role sees all', async () => {
  const a = await asUser(USER_A).from('todos').select('task').order('id');
  assert.deepEqual(a.data.map((r) => r.task), ['buy milk', 'walk dog', 'public:read me']);
  const b = await asUser(USER_B).from('todos').select('task');
  assert.deepEqual(b.data, [{ task: 'b secret' }]);
  // Every user's rows (other test files may add rows of their own meanwhile).
  const all = await service.from('todos').select('task');
  const tasks = all.data.map((r) => r.task);
  for (const task of ['buy milk', 'walk dog', 'public:read me', 'b secret']) {
    assert.ok(tasks.includes(task), `${task} in ${JSON.stringify(tasks)}`);
  }
});

test('filters, order, range and count', async () => {
  const a = asUser(USER_A);
  let r = await a.from('todos').select('task').eq('done', true);
  assert.deepEqual(r.data, [{ task: 'walk dog' }]);
  r = await a.from('todos').select('task').in('id', [1, 3]).order('id', { ascending: false });
  assert.deepEqual(r.data.map((x) => x.task), ['public:read me', 'buy milk']);
  r = await a.from('todos').select('task').or('priority.eq.1,done.is.true').order('id');
  assert.deepEqual(r.data.map((x) => x.task), ['buy milk', 'walk dog']);
  r = await a.from('todos').select('task').contains('tags', ['shop']);
  assert.deepEqual(r.data, [{ task: 'buy milk' }]);
  r = await a.from('todos').select('task').ilike('task', '%MILK%');
  assert.deepEqual(r.data, [{ task: 'buy milk' }]);
  r = await a.from('todos').select('task').is('priority', null);
  assert.deepEqual(r.data, [{ task: 'public:read me' }]);
  r = await a.from('todos').select('task').textSearch('task', 'dog');
  assert.deepEqual(r.data, [{ task: 'walk dog' }]);
  r = await a.from('todos').select('task').gt('data->size', 1);
  assert.deepEqual(r.data, [{ task: 'buy milk' }]);
  r = await a.from('todos').select('task', { count: 'exact' }).order('id').range(0, 1);
  assert.equal(r.count, 3);
  assert.equal(r.status, 206);
  assert.deepEqual(r.data.map((x) => x.task), ['buy milk', 'walk dog']);
  r = await a.from('todos').select('*', { count: 'exact', head: true });
  assert.equal(r.count, 3);
  assert.equal(r.data, null);
});

test('single and maybeSingle', async () => {
  const a = asUser(USER_A);
  let r = await a.from('todos').select('task').eq('id', 1).single();
  assert.deepEqual(r.data, { task: 'buy milk' });
  r = await a.from('todos').select('task').eq('id', 4).single();
  assert.equal(r.error.code, 'PGRST116', 'B\'s row is invisible to A');
  r = await a.from('todos').select('task').eq('id', 99).maybeSingle();
  assert.equal(r.error, null);
  assert.equal(r.data, null);
});

test('insert, update, upsert and delete', async () => {
  const a = asUser(USER_A);
  let r = await a.from('todos').insert({ task: 'from js' }).select('task, owner').single();
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.deepEqual(r.data, { task: 'from js', owner: USER_A });
  r = await a.from('todos').insert([{ task: 'bulk 1' }, { task: 'bulk 2', priority: 3 }]);
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.equal(r.status, 201);
  r = await a.from('todos').update({ done: true }).like('task', 'bulk%').select('task');
  assert.deepEqual(r.data.map((x) => x.task).sort(), ['bulk 1', 'bulk 2']);
  r = await asUser(USER_B).from('todos').update({ task: 'hijack' }).eq('id', 1).select();
  assert.deepEqual(r.data, [], 'B cannot update A\'s row');
  r = await a.from('todos').delete().like('task', 'bulk%');
  assert.equal(r.status, 204);
  r = await service.from('kv').upsert({ k: 'x', v: '1' }).select();
  assert.deepEqual(r.data, [{ k: 'x', v: '1' }]);
  r = await service.from('kv').upsert({ k: 'x', v: '2' }).select();
  assert.deepEqual(r.data, [{ k: 'x', v: '2' }]);
  r = await service.from('kv').upsert({ k: 'x', v: '3' }, { ignoreDuplicates: true }).select();
  assert.deepEqual(r.data, []);
});

test('refusals arrive as PostgREST errors', async () => {
  let r = await anon.from('nope').select();
  assert.equal(r.error.code, 'PGRST205');
  assert.equal(r.status, 404);
  r = await anon.from('todos').insert({ task: 'x', owner: USER_A });
  assert.equal(r.error.code, '42501');
  assert.equal(r.status, 401);
  r = await asUser(USER_B).from('todos').insert({ task: 'x', owner: USER_A });
  assert.equal(r.error.code, '42501');
  assert.equal(r.status, 403);
  r = await service.from('kv').insert({ k: 'x', v: 'dup' });
  assert.equal(r.error.code, '23505');
  assert.equal(r.status, 409);
  r = await anon.from('todos').select('missing');
  assert.equal(r.error.code, '42703');
});

test('other schemas through .schema()', async () => {
  const r = await anon.schema('personal').from('notes').select('body');
  assert.deepEqual(r.data, [{ body: 'private schema' }]);
  const bad = await anon.schema('auth').from('users').select();
  assert.equal(bad.error.code, 'PGRST106');
});

test('embedded resources', async () => {
  let r = await anon.from('messages').select('id, message, users(username, status)').order('id').limit(2);
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.deepEqual(r.data, [
    { id: 1, message: 'Hello World', users: { username: 'supabot', status: 'ONLINE' } },
    { id: 2, message: 'Perfection', users: { username: 'supabot', status: 'ONLINE' } },
  ]);
  r = await anon
    .from('users')
    .select('username, messages!inner(id, channels(slug))')
    .eq('messages.channel_id', 1)
    .order('username')
    .order('id', { referencedTable: 'messages', ascending: false });
  assert.deepEqual(r.data, [
    { username: 'kiwicopple', messages: [{ id: 3, channels: { slug: 'public' } }] },
    { username: 'supabot', messages: [{ id: 1, channels: { slug: 'public' } }] },
  ]);
  r = await anon.from('users').select('username, messages(id)').limit(1, { referencedTable: 'messages' }).eq('username', 'supabot');
  assert.deepEqual(r.data, [{ username: 'supabot', messages: [{ id: 1 }] }]);
  r = await anon.from('users').select('username, channels(*)');
  assert.equal(r.error.code, 'PGRST200');
});

test('functions through rpc()', async () => {
  let r = await anon.rpc('add', { a: 1, b: 2 });
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.equal(r.data, 3);
  r = await anon.rpc('get_status', { name_param: 'supabot' }, { get: true });
  assert.equal(r.data, 'ONLINE');
  r = await anon.rpc('user_messages', { name_param: 'supabot' }).select('id').order('id', { ascending: false });
  assert.deepEqual(r.data, [{ id: 2 }, { id: 1 }]);
  r = await anon.rpc('user_messages', { name_param: 'supabot' }).eq('id', 1).single();
  assert.equal(r.data.message, 'Hello World');
  r = await service.rpc('note', { k: 'from-rpc' });
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.equal(r.status, 204);
  r = await service.from('kv').select('v').eq('k', 'from-rpc').single();
  assert.deepEqual(r.data, { v: 'noted' });
  r = await anon.rpc('no_such_function');
  assert.equal(r.error.code, 'PGRST202');
});

test('aggregates and spreads as postgrest-js sends them', async () => {
  let r = await anon.from('messages').select('username, count()').order('username');
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.deepEqual(r.data, [{ username: 'kiwicopple', count: 1 }, { username: 'supabot', count: 2 }]);
  r = await anon.from('messages').select('id.sum(), id.max()');
  assert.deepEqual(r.data, [{ sum: 6, max: 3 }]);
  r = await anon.from('messages').select('id, ...users(status)').order('id').limit(1);
  assert.deepEqual(r.data, [{ id: 1, status: 'ONLINE' }]);
  r = await anon.from('users').select('username, messages(count)').eq('username', 'supabot');
  assert.deepEqual(r.data, [{ username: 'supabot', messages: [{ count: 2 }] }]);
});

test('computed relationships and fields (#16)', async () => {
  let r = await anon.from('channels').select('id, channel_messages(id)').order('id')
    .order('id', { referencedTable: 'channel_messages' });
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.deepEqual(r.data, [
    { id: 1, channel_messages: [{ id: 1 }, { id: 3 }] },
    { id: 2, channel_messages: [{ id: 2 }] },
  ]);
  r = await anon.from('channels').select('id, channel_messages!inner(id)').eq('channel_messages.username', 'kiwicopple');
  assert.deepEqual(r.data, [{ id: 1, channel_messages: [{ id: 3 }] }]);
  r = await anon.from('messages').select('id, message_channel(slug)').eq('id', 2).single();
  assert.deepEqual(r.data, { id: 2, message_channel: { slug: 'random' } });
  r = await anon.from('messages').select('id, shout').eq('shout', 'HI');
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.deepEqual(r.data, [{ id: 3, shout: 'HI' }]);
  r = await anon.from('messages').select('id').order('shout').limit(1);
  assert.deepEqual(r.data, [{ id: 1 }]);
  r = await anon.from('channels').select('slug, messages(shout)').eq('id', 2);
  assert.deepEqual(r.data, [{ slug: 'random', messages: [{ shout: 'PERFECTION' }] }]);
});

test('unnamed parameters and overloads through rpc() (#16)', async () => {
  let r = await anon.rpc('echo_jsonb', [1, { a: 2 }]);
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.deepEqual(r.data, [1, { a: 2 }]);
  r = await anon.rpc('pick', { a: 1 });
  assert.equal(r.data, 'one');
  r = await anon.rpc('pick', { a: 1, b: 2 });
  assert.equal(r.data, 'two');
  r = await anon.rpc('pick', { a: 1, c: 2 });
  assert.equal(r.error.code, 'PGRST202');
  assert.equal(r.error.hint, 'Perhaps you meant to call the function public.pick(a, b)');
});

test('aggregates beside embeds (#16)', async () => {
  const r = await anon.from('messages').select('channels(slug), id.count()');
  assert.equal(r.error, null, JSON.stringify(r.error));
  const rows = r.data.sort((x, y) => x.channels.slug.localeCompare(y.channels.slug));
  assert.deepEqual(rows, [{ channels: { slug: 'public' }, count: 2 }, { channels: { slug: 'random' }, count: 1 }]);
});

test('upsert answers 201 when it creates, 200 when it only updates (#16)', async () => {
  let r = await service.from('kv').upsert({ k: 'up', v: '1' });
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.equal(r.status, 201);
  r = await service.from('kv').upsert({ k: 'up', v: '2' }).select();
  assert.equal(r.status, 200);
  assert.deepEqual(r.data, [{ k: 'up', v: '2' }]);
});

test('rpc() with a count runs the function once (#16)', async () => {
  const r = await service.rpc('counted_messages', {}, { count: 'exact' }).select('id').limit(1);
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.equal(r.count, 3);
  assert.equal(r.status, 206);
  assert.deepEqual(r.data, [{ id: 1 }]);
  const calls = await service.from('rpc_calls').select('*', { count: 'exact', head: true });
  assert.equal(calls.count, 1);
  const scalar = await anon.rpc('pick', { a: 1 }, { count: 'exact' });
  assert.equal(scalar.count, 1);
});

test('csv()', async () => {
  const r = await anon.from('users').select('username, status').order('username').csv();
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.equal(r.data, 'username,status\nawailas,ONLINE\nkiwicopple,OFFLINE\nsupabot,ONLINE');
});

test('rollback(), maxAffected() and stripNulls()', async () => {
  let r = await service.from('kv').insert({ k: 'rolled', v: 'back' }).select().rollback();
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.deepEqual(r.data, [{ k: 'rolled', v: 'back' }]);
  r = await service.from('kv').select().eq('k', 'rolled');
  assert.deepEqual(r.data, [], 'rolled back');
  await service.from('kv').insert([{ k: 'm1', v: 'x' }, { k: 'm2', v: 'x' }]);
  r = await service.from('kv').update({ v: 'y' }).eq('v', 'x').maxAffected(1);
  assert.equal(r.error.code, 'PGRST124');
  r = await service.from('kv').select('v').eq('v', 'x');
  assert.equal(r.data.length, 2, 'nothing changed');
  r = await anon.from('users').select('username, status').eq('username', 'supabot').stripNulls();
  assert.deepEqual(r.data, [{ username: 'supabot', status: 'ONLINE' }]);
});
