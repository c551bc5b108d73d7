// Two tenants at once on one sovra (#14), each driven by its own real
// supabase-js client at its own URL (`/t/{name}`): sign-up, RLS reads and
// writes, realtime changes and broadcast, storage — and each isolated from
// the other (cross-tenant tokens, keys, signed URLs and topics refused).
// Tenants are made through the tenant API with the platform key; their
// schema is loaded with psql through the embedded cluster's socket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const platformKey = process.env.SOVRA_PLATFORM_KEY;
const pgSocket = process.env.SOVRA_PG_SOCKET;
const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const short = () => randomUUID().slice(0, 8);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const made = [];

async function until(predicate, what, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (predicate()) return;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${typeof what === 'function' ? what() : what}`);
}

function subscribed(channel) {
  return new Promise((resolve) => {
    channel.subscribe((status, err) => {
      if (status === 'SUBSCRIBED' || status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') resolve({ status, err });
    });
  });
}

async function platform(method, path, body) {
  const response = await fetch(`${url}/sovra/v1/tenants${path}`, {
    method,
    headers: { authorization: `Bearer ${platformKey}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

const SCHEMA = `
create table public.notes (
  id bigint generated always as identity primary key,
  owner uuid not null default auth.uid(),
  body text not null);
alter table public.notes enable row level security;
create policy own on public.notes for all to authenticated
  using (owner = auth.uid()) with check (owner = auth.uid());
alter publication supabase_realtime add table public.notes;
insert into storage.buckets (id, name, public) values ('docs', 'docs', false);
create policy own_docs on storage.objects for all to authenticated
  using (bucket_id = 'docs' and (storage.foldername(name))[1] = auth.uid()::text)
  with check (bucket_id = 'docs' and (storage.foldername(name))[1] = auth.uid()::text);
`;

async function tenant(tag) {
  const name = `${tag}-${short()}`;
  const created = await platform('POST', '', { name });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const patched = await platform('PATCH', `/${name}`, { email_autoconfirm: true });
  assert.equal(patched.status, 200);
  execFileSync('psql', ['-h', pgSocket, '-U', 'postgres', '-d', created.body.database, '-v', 'ON_ERROR_STOP=1', '-q', '-c', SCHEMA]);
  return created.body;
}

function client(t) {
  const c = createClient(t.url, t.anon_key, opts);
  made.push(c);
  return c;
}

async function signedUp(t) {
  const c = client(t);
  const email = `user-${short()}@example.com`;
  const { data, error } = await c.auth.signUp({ email, password: 'password1' });
  assert.equal(error, null);
  assert.ok(data.session, 'auto-confirmed sign-up has a session');
  c.realtime.setAuth(data.session.access_token);
  return { c, id: data.user.id, token: data.session.access_token, email };
}

let a;
let b;
before(async () => {
  a = await tenant('e2e-a');
  b = await tenant('e2e-b');
});

after(async () => {
  for (const c of made) {
    await c.removeAllChannels().catch(() => {});
    c.realtime.disconnect();
  }
  for (const t of [a, b]) if (t) await platform('DELETE', `/${t.name}`);
});

test('the tenant API answers with URLs supabase-js takes', async () => {
  assert.equal(a.url, `${url}/t/${a.name}`);
  const list = await platform('GET', '');
  assert.equal(list.status, 200);
  const names = list.body.map((t) => t.name);
  assert.ok(names.includes(a.name) && names.includes(b.name));
  const bad = await platform('POST', '', { name: 'Not_A_Label' });
  assert.equal(bad.status, 400);
  const unknown = await fetch(`${url}/t/no-such-${short()}/rest/v1/notes`);
  assert.equal(unknown.status, 404);
});

test('sign-up and RLS reads and writes stay inside each tenant', async () => {
  // One email, two tenants: two separate accounts.
  const alice = await signedUp(a);
  const sameEmail = client(b);
  const again = await sameEmail.auth.signUp({ email: alice.email, password: 'password1' });
  assert.equal(again.error, null);
  assert.notEqual(again.data.user.id, alice.id);
  const bob = await signedUp(b);

  const wrote = await alice.c.from('notes').insert({ body: 'alice in a' }).select().single();
  assert.equal(wrote.error, null);
  assert.equal(wrote.data.owner, alice.id);
  assert.equal((await bob.c.from('notes').insert({ body: 'bob in b' })).error, null);
  const inA = await alice.c.from('notes').select('body');
  assert.deepEqual(inA.data, [{ body: 'alice in a' }]);
  const inB = await bob.c.from('notes').select('body');
  assert.deepEqual(inB.data, [{ body: 'bob in b' }]);
  // RLS within a tenant: another user of a sees nothing of alice's.
  const carol = await signedUp(a);
  assert.deepEqual((await carol.c.from('notes').select('body')).data, []);

  // Alice's token on b, and a's anon key on b: refused.
  const forged = createClient(b.url, b.anon_key, { ...opts, global: { headers: { Authorization: `Bearer ${alice.token}` } } });
  made.push(forged);
  const refused = await forged.from('notes').select('body');
  assert.equal(refused.status, 401);
  const wrongKey = createClient(b.url, a.anon_key, opts);
  made.push(wrongKey);
  const refusedKey = await wrongKey.from('notes').select('body');
  assert.equal(refusedKey.status, 401);
  const user = await forged.auth.getUser(alice.token);
  assert.ok(user.error, 'auth on b refuses a token of a');
});

test('realtime changes and broadcast reach their own tenant only', async () => {
  const alice = await signedUp(a);
  const bob = await signedUp(b);
  const seen = { a: [], b: [] };
  const room = `room-${short()}`;
  const ca = alice.c.channel(room, { config: { broadcast: { ack: true } } })
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'notes' }, (p) => seen.a.push(`change:${p.new.body}`))
    .on('broadcast', { event: 'say' }, (m) => seen.a.push(`say:${m.payload.text}`));
  const cb = bob.c.channel(room, { config: { broadcast: { ack: true } } })
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'notes' }, (p) => seen.b.push(`change:${p.new.body}`))
    .on('broadcast', { event: 'say' }, (m) => seen.b.push(`say:${m.payload.text}`));
  assert.equal((await subscribed(ca)).status, 'SUBSCRIBED');
  assert.equal((await subscribed(cb)).status, 'SUBSCRIBED');
  // Another client of each tenant, on the same topic, sends.
  const a2 = client(a);
  const b2 = client(b);
  const sa = a2.channel(room, { config: { broadcast: { ack: true } } });
  const sb = b2.channel(room, { config: { broadcast: { ack: true } } });
  assert.equal((await subscribed(sa)).status, 'SUBSCRIBED');
  assert.equal((await subscribed(sb)).status, 'SUBSCRIBED');
  assert.equal(await sa.send({ type: 'broadcast', event: 'say', payload: { text: 'hi a' } }), 'ok');
  assert.equal(await sb.send({ type: 'broadcast', event: 'say', payload: { text: 'hi b' } }), 'ok');
  await until(() => seen.a.includes('say:hi a') && seen.b.includes('say:hi b'), () => JSON.stringify(seen));

  assert.equal((await alice.c.from('notes').insert({ body: 'rt a' })).error, null);
  assert.equal((await bob.c.from('notes').insert({ body: 'rt b' })).error, null);
  await until(() => seen.a.includes('change:rt a') && seen.b.includes('change:rt b'), () => JSON.stringify(seen));
  // Each saw only its own tenant's messages and changes.
  assert.deepEqual(seen.a.filter((m) => m.endsWith(' b')), []);
  assert.deepEqual(seen.b.filter((m) => m.endsWith(' a')), []);
});

test('storage: own files, own signed URLs', async () => {
  const alice = await signedUp(a);
  const bob = await signedUp(b);
  const path = `${alice.id}/hello.txt`;
  const up = await alice.c.storage.from('docs').upload(path, new Blob(['hello from a'], { type: 'text/plain' }));
  assert.equal(up.error, null);
  const down = await alice.c.storage.from('docs').download(path);
  assert.equal(down.error, null);
  assert.equal(await down.data.text(), 'hello from a');
  // Bob (tenant b) has the same bucket name and sees nothing of a's.
  const listed = await bob.c.storage.from('docs').list(alice.id);
  assert.deepEqual(listed.data ?? [], []);
  const signed = await alice.c.storage.from('docs').createSignedUrl(path, 60);
  assert.equal(signed.error, null);
  assert.ok(signed.data.signedUrl.startsWith(`${a.url}/storage/v1/object/sign/`), signed.data.signedUrl);
  assert.equal((await fetch(signed.data.signedUrl)).status, 200);
  // The same signed path under b's URL is refused.
  const onB = signed.data.signedUrl.replace(a.url, b.url);
  const refused = await fetch(onB);
  assert.equal(refused.status, 400);
});

test('a suspended tenant answers 503 and resumes', async () => {
  const c = client(b);
  const suspended = await platform('POST', `/${b.name}/suspend`);
  assert.equal(suspended.status, 200);
  const during = await c.from('notes').select('body');
  assert.equal(during.status, 503);
  assert.equal((await platform('POST', `/${b.name}/resume`)).status, 200);
  const afterwards = await c.from('notes').select('body');
  assert.equal(afterwards.status, 200);
});

test("a tenant's opaque keys work in supabase-js at its URL only", async () => {
  // Shown once, in the create answer.
  assert.match(a.publishable_key, /^sb_publishable_/);
  assert.match(a.secret_key, /^sb_secret_/);
  const shown = await platform('GET', `/${a.name}`);
  assert.equal(shown.body.secret_key, undefined);
  // The publishable key signs up (anon), the secret key sees every bucket
  // (service_role).
  const pub = createClient(a.url, a.publishable_key, opts);
  made.push(pub);
  const { data, error } = await pub.auth.signUp({ email: `opaque-${short()}@example.com`, password: 'password1' });
  assert.equal(error, null);
  assert.ok(data.session);
  const secret = createClient(a.url, a.secret_key, opts);
  made.push(secret);
  const buckets = await secret.storage.listBuckets();
  assert.equal(buckets.error, null);
  assert.ok(buckets.data.some((bucket) => bucket.name === 'docs'));
  // Another tenant and the default tenant refuse them.
  for (const base of [b.url, url]) {
    const other = createClient(base, a.secret_key, opts);
    made.push(other);
    const refused = await other.storage.listBuckets();
    assert.ok(refused.error, `${base} accepted another tenant's secret key`);
    const rows = await other.from('notes').select('*');
    assert.ok(rows.error, `${base} accepted another tenant's secret key`);
  }
});
