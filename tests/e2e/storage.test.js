// Storage through the real supabase-js client (storage-js), against the
// running sovra binary that run.sh started with fixture.sql loaded. The
// fixture's policies let signed-in users touch only the objects of bucket
// `e2e-private` under a first folder named after their uid; the bucket itself
// is created here with the service key. Every other bucket gets a fresh name.
//
// Errors: storage-js turns an error response into a StorageApiError whose
// `statusCode` is the body's string `statusCode` (the logical status) and
// whose `status` is the HTTP status, which is 400 for every logical status
// except 500.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;

const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const client = () => createClient(url, anonKey, opts);
const service = createClient(url, serviceKey, opts);
const short = () => randomUUID().slice(0, 8);
const storageUrl = `${url}/storage/v1`;
const PRIVATE = 'e2e-private';
// Sovra's ETags name the stored version (a new one on every write), in the
// quoted 32-hex shape of Supabase's; they are not a hash of the content.
const ETAG = /^"[0-9a-f]{32}"$/;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The bucket the fixture's policies name; created once (a rerun against
// the same server finds it there already).
let privateBucket;
function ensurePrivateBucket() {
  privateBucket ??= service.storage.createBucket(PRIVATE, { public: false }).then(({ error }) => {
    if (error && error.statusCode !== '409') throw error;
  });
  return privateBucket;
}

// A confirmed user signed in on a client of their own.
async function newUser(tag) {
  await ensurePrivateBucket();
  const address = `${tag}-${short()}@example.com`;
  const created = await service.auth.admin.createUser({ email: address, password: 'password1', email_confirm: true });
  assert.equal(created.error, null);
  const c = client();
  const signedIn = await c.auth.signInWithPassword({ email: address, password: 'password1' });
  assert.equal(signedIn.error, null);
  return { c, id: signedIn.data.user.id, files: c.storage.from(PRIVATE) };
}

// A fresh bucket made by the service client.
async function newBucket(tag, options = { public: false }) {
  const id = `e2e-${tag}-${short()}`;
  const { data, error } = await service.storage.createBucket(id, options);
  assert.equal(error, null, JSON.stringify(error));
  assert.deepEqual(data, { name: id });
  return id;
}

async function dropBucket(id) {
  assert.equal((await service.storage.emptyBucket(id)).error, null);
  assert.equal((await service.storage.deleteBucket(id)).error, null);
}

// A storage API error with the logical status `statusCode` (a string), sent
// with HTTP 400 (500 only for logical 500).
function isStorageError(error, statusCode, message) {
  assert.ok(error, `expected a storage error with statusCode ${statusCode}`);
  assert.equal(error.name, 'StorageApiError', String(error));
  assert.equal(error.statusCode, statusCode, `${error.statusCode}: ${error.message}`);
  assert.equal(error.status, statusCode === '500' ? 500 : 400);
  if (message !== undefined) assert.equal(error.message, message);
}

// A response to a plain fetch() that carries a storage error body.
async function isErrorResponse(r, statusCode) {
  assert.equal(r.status, 400);
  assert.match(r.headers.get('content-type') ?? '', /application\/json/);
  const body = await r.json();
  assert.equal(body.statusCode, statusCode, JSON.stringify(body));
  assert.equal(typeof body.error, 'string');
  assert.equal(typeof body.message, 'string');
  return body;
}

test('buckets: create with limits, get, list, update; a second create is a 409', async () => {
  const id = await newBucket('buckets', { public: false, fileSizeLimit: 1024, allowedMimeTypes: ['text/*'] });

  const got = await service.storage.getBucket(id);
  assert.equal(got.error, null);
  assert.equal(got.data.id, id);
  assert.equal(got.data.name, id);
  assert.equal(got.data.public, false);
  assert.equal(got.data.file_size_limit, 1024);
  assert.deepEqual(got.data.allowed_mime_types, ['text/*']);
  assert.equal(got.data.type, 'STANDARD');
  assert.ok(!Number.isNaN(Date.parse(got.data.created_at)));
  assert.ok(!Number.isNaN(Date.parse(got.data.updated_at)));

  const listed = await service.storage.listBuckets();
  assert.equal(listed.error, null);
  assert.ok(listed.data.some((b) => b.id === id && b.name === id), 'listBuckets includes the new bucket');
  const searched = await service.storage.listBuckets({ search: id });
  assert.equal(searched.error, null);
  assert.deepEqual(searched.data.map((b) => b.id), [id]);

  // A size limit given as a string is stored in bytes (decimal units).
  const updated = await service.storage.updateBucket(id, {
    public: true,
    fileSizeLimit: '1mb',
    allowedMimeTypes: ['text/plain', 'image/png'],
  });
  assert.equal(updated.error, null);
  assert.deepEqual(updated.data, { message: 'Successfully updated' });
  const after = await service.storage.getBucket(id);
  assert.equal(after.data.public, true);
  assert.equal(after.data.file_size_limit, 1_000_000);
  assert.deepEqual(after.data.allowed_mime_types, ['text/plain', 'image/png']);

  const again = await service.storage.createBucket(id);
  isStorageError(again.error, '409', 'The resource already exists');
  assert.equal(again.data, null);

  const missing = await service.storage.getBucket(`e2e-missing-${short()}`);
  isStorageError(missing.error, '404', 'Bucket not found');

  await dropBucket(id);
});

test('a user uploads, downloads, lists, inspects, upserts, updates, moves, copies and removes in their folder', async () => {
  const { id: uid, files } = await newUser('owner');
  const path = `${uid}/hello.txt`;

  // A string body goes out raw with the given Content-Type (+ x-metadata).
  const up = await files.upload(path, 'hello world', { contentType: 'text/plain', metadata: { purpose: 'e2e' } });
  assert.equal(up.error, null, JSON.stringify(up.error));
  assert.equal(up.data.path, path);
  assert.equal(up.data.fullPath, `${PRIVATE}/${path}`);
  assert.match(up.data.id, /^[0-9a-f-]{36}$/);

  const down = await files.download(path);
  assert.equal(down.error, null);
  assert.equal(await down.data.text(), 'hello world');
  assert.equal(down.data.type, 'text/plain');

  // A Buffer goes out raw as well; the bytes come back unchanged.
  const bytes = Buffer.from([0, 1, 2, 127, 128, 253, 254, 255]);
  const raw = await files.upload(`${uid}/raw.bin`, bytes, { contentType: 'application/octet-stream' });
  assert.equal(raw.error, null, JSON.stringify(raw.error));
  const rawBack = await files.download(`${uid}/raw.bin`);
  assert.deepEqual(Buffer.from(await rawBack.data.arrayBuffer()), bytes);

  // A Blob goes out as multipart/form-data (cacheControl, metadata, file part).
  const blob = await files.upload(`${uid}/blob.txt`, new Blob(['from a blob'], { type: 'text/plain' }), {
    cacheControl: '60',
    metadata: { via: 'form' },
  });
  assert.equal(blob.error, null, JSON.stringify(blob.error));
  const blobBack = await files.download(`${uid}/blob.txt`);
  assert.equal(await blobBack.data.text(), 'from a blob');

  const listed = await files.list(uid);
  assert.equal(listed.error, null);
  assert.deepEqual(listed.data.map((o) => o.name), ['blob.txt', 'hello.txt', 'raw.bin']);
  const hello = listed.data.find((o) => o.name === 'hello.txt');
  assert.match(hello.id, /^[0-9a-f-]{36}$/);
  assert.equal(hello.metadata.size, 11);
  assert.equal(hello.metadata.mimetype, 'text/plain');
  assert.equal(hello.metadata.cacheControl, 'max-age=3600');
  assert.match(hello.metadata.eTag, ETAG);
  assert.ok(!Number.isNaN(Date.parse(hello.updated_at)));
  const searched = await files.list(uid, { search: 'HEL' });
  assert.deepEqual(searched.data.map((o) => o.name), ['hello.txt']);
  const paged = await files.list(uid, { limit: 1, offset: 1 });
  assert.deepEqual(paged.data.map((o) => o.name), ['hello.txt']);

  // info() is camel-cased by storage-js; metadata is the user metadata.
  const info = await files.info(path);
  assert.equal(info.error, null, JSON.stringify(info.error));
  assert.equal(info.data.name, path);
  // Only the fields Supabase Storage's info sends (no bucket_id).
  assert.equal(info.data.bucketId, undefined);
  assert.match(info.data.createdAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  assert.equal(info.data.size, 11);
  assert.equal(info.data.contentType, 'text/plain');
  assert.equal(info.data.cacheControl, 'max-age=3600');
  assert.equal(info.data.etag, hello.metadata.eTag);
  assert.deepEqual(info.data.metadata, { purpose: 'e2e' });
  const blobInfo = await files.info(`${uid}/blob.txt`);
  assert.equal(blobInfo.data.contentType, 'text/plain');
  assert.equal(blobInfo.data.cacheControl, 'max-age=60');
  assert.deepEqual(blobInfo.data.metadata, { via: 'form' });

  // exists() is a HEAD; a 400/404 answer means false.
  assert.deepEqual(await files.exists(path), { data: true, error: null });
  const absent = await files.exists(`${uid}/nope.txt`);
  assert.equal(absent.data, false);

  const dup = await files.upload(path, 'hello again', { contentType: 'text/plain' });
  isStorageError(dup.error, '409', 'The resource already exists');
  const upsert = await files.upload(path, 'hello again', { contentType: 'text/plain', upsert: true });
  assert.equal(upsert.error, null, JSON.stringify(upsert.error));
  assert.equal(await (await files.download(path)).data.text(), 'hello again');

  // update() is a PUT of the same object; a missing one is a 404.
  const upd = await files.update(path, 'updated!', { contentType: 'text/plain' });
  assert.equal(upd.error, null, JSON.stringify(upd.error));
  assert.equal(upd.data.path, path);
  assert.equal(await (await files.download(path)).data.text(), 'updated!');
  const updMissing = await files.update(`${uid}/missing.txt`, 'x', { contentType: 'text/plain' });
  isStorageError(updMissing.error, '404', 'Object not found');

  const moved = await files.move(path, `${uid}/moved.txt`);
  assert.equal(moved.error, null, JSON.stringify(moved.error));
  assert.deepEqual(moved.data, { message: 'Successfully moved' });
  isStorageError((await files.download(path)).error, '404', 'Object not found');
  assert.equal(await (await files.download(`${uid}/moved.txt`)).data.text(), 'updated!');

  const copied = await files.copy(`${uid}/moved.txt`, `${uid}/copy.txt`);
  assert.equal(copied.error, null, JSON.stringify(copied.error));
  assert.deepEqual(copied.data, { path: `${PRIVATE}/${uid}/copy.txt` });
  assert.equal(await (await files.download(`${uid}/copy.txt`)).data.text(), 'updated!');
  const onto = await files.move(`${uid}/moved.txt`, `${uid}/copy.txt`);
  isStorageError(onto.error, '409');

  // remove() answers with the rows it deleted; unknown names are skipped.
  const removed = await files.remove([`${uid}/moved.txt`, `${uid}/copy.txt`, `${uid}/never-was.txt`]);
  assert.equal(removed.error, null, JSON.stringify(removed.error));
  assert.deepEqual(removed.data.map((o) => o.name).sort(), [`${uid}/copy.txt`, `${uid}/moved.txt`]);
  const gone = await files.download(`${uid}/moved.txt`);
  isStorageError(gone.error, '404', 'Object not found');
  assert.equal(gone.data, null);
  assert.deepEqual((await files.list(uid)).data.map((o) => o.name), ['blob.txt', 'raw.bin']);
});

test('RLS: other users and anon cannot read, write, list or delete in a user folder', async () => {
  const a = await newUser('alice');
  const b = await newUser('bob');
  const secret = `${a.id}/secret.txt`;
  assert.equal((await a.files.upload(secret, 'for alice only', { contentType: 'text/plain' })).error, null);

  isStorageError((await b.files.download(secret)).error, '404', 'Object not found');
  assert.equal((await b.files.exists(secret)).data, false);
  isStorageError((await b.files.info(secret)).error, '404');
  isStorageError((await b.files.createSignedUrl(secret, 60)).error, '404');
  const intrude = await b.files.upload(`${a.id}/intruder.txt`, 'boo', { contentType: 'text/plain' });
  isStorageError(intrude.error, '403', 'new row violates row-level security policy');
  const overwrite = await b.files.upload(secret, 'boo', { contentType: 'text/plain', upsert: true });
  assert.ok(overwrite.error, 'B cannot upsert over A\'s object');
  const listed = await b.files.list(a.id);
  assert.equal(listed.error, null);
  assert.deepEqual(listed.data, []);
  const removed = await b.files.remove([secret]);
  assert.equal(removed.error, null);
  assert.deepEqual(removed.data, [], 'invisible objects are skipped, not deleted');

  // A may not move an object out of their own folder into B's.
  isStorageError((await a.files.move(secret, `${b.id}/stolen.txt`)).error, '403');
  assert.equal(await (await a.files.download(secret)).data.text(), 'for alice only');

  const anonFiles = client().storage.from(PRIVATE);
  isStorageError((await anonFiles.upload(`${a.id}/anon.txt`, 'x', { contentType: 'text/plain' })).error, '403');
  isStorageError((await anonFiles.download(secret)).error, '404');
  assert.deepEqual((await anonFiles.list(a.id)).data, []);

  // Buckets: authenticated may see them (fixture policy), anon may not, and
  // neither may create one.
  const seen = await b.c.storage.getBucket(PRIVATE);
  assert.equal(seen.error, null);
  assert.equal(seen.data.id, PRIVATE);
  assert.ok((await b.c.storage.listBuckets()).data.some((x) => x.id === PRIVATE));
  isStorageError((await client().storage.getBucket(PRIVATE)).error, '404', 'Bucket not found');
  isStorageError((await b.c.storage.createBucket(`e2e-user-${short()}`)).error, '403');

  // A token that does not verify is refused as AccessDenied (logical 403).
  const forged = createClient(url, anonKey, { ...opts, global: { headers: { Authorization: 'Bearer not.a.jwt' } } });
  const refused = await forged.storage.from(PRIVATE).download(secret);
  assert.equal(refused.error?.statusCode, '403', JSON.stringify(refused.error));
});

test('bucket limits: file_size_limit gives 413, allowed_mime_types (with wildcards) gives 415', async () => {
  const id = await newBucket('limits', { public: false, fileSizeLimit: 1024, allowedMimeTypes: ['text/*'] });
  const files = service.storage.from(id);

  const exact = await files.upload('exact.txt', 'x'.repeat(1024), { contentType: 'text/plain' });
  assert.equal(exact.error, null, JSON.stringify(exact.error));
  const big = await files.upload('big.txt', 'x'.repeat(1025), { contentType: 'text/plain' });
  isStorageError(big.error, '413', 'The object exceeded the maximum allowed size');
  const bigForm = await files.upload('big-form.txt', new Blob(['y'.repeat(2000)], { type: 'text/plain' }));
  isStorageError(bigForm.error, '413');
  isStorageError((await files.download('big.txt')).error, '404');

  const png = await files.upload('pic.png', Buffer.from('not really a png'), { contentType: 'image/png' });
  isStorageError(png.error, '415', 'mime type image/png is not supported');
  const pngForm = await files.upload('pic-form.png', new Blob(['nope'], { type: 'image/png' }));
  isStorageError(pngForm.error, '415');
  // The wildcard admits any text/ subtype, with or without parameters
  // (storage-js' default Content-Type is text/plain;charset=UTF-8).
  const md = await files.upload('notes.md', '# notes', { contentType: 'text/markdown' });
  assert.equal(md.error, null, JSON.stringify(md.error));
  const dflt = await files.upload('default.txt', 'default content type');
  assert.equal(dflt.error, null, JSON.stringify(dflt.error));

  // Lifting the limits lets the same uploads through.
  const lifted = await service.storage.updateBucket(id, { public: false, fileSizeLimit: null, allowedMimeTypes: null });
  assert.equal(lifted.error, null);
  const meta = await service.storage.getBucket(id);
  assert.equal(meta.data.file_size_limit, null);
  assert.equal(meta.data.allowed_mime_types, null);
  assert.equal((await files.upload('big.txt', 'x'.repeat(1025), { contentType: 'text/plain' })).error, null);
  assert.equal((await files.upload('pic.png', Buffer.from('still not a png'), { contentType: 'image/png' })).error, null);

  await dropBucket(id);
});

test('signed download URLs: fetch without headers, expiry, tampering, and createSignedUrls', async () => {
  const { id: uid, files } = await newUser('signer');
  const path = `${uid}/signed.txt`;
  assert.equal((await files.upload(path, 'signed content', { contentType: 'text/plain' })).error, null);

  const signed = await files.createSignedUrl(path, 60);
  assert.equal(signed.error, null, JSON.stringify(signed.error));
  const prefix = `${storageUrl}/object/sign/${PRIVATE}/${path}?token=`;
  assert.ok(signed.data.signedUrl.startsWith(prefix), signed.data.signedUrl);
  const r = await fetch(signed.data.signedUrl);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'text/plain');
  assert.equal(await r.text(), 'signed content');

  // storage-js appends &download=<name> to the signed URL.
  const named = await files.createSignedUrl(path, 60, { download: 'report.txt' });
  assert.ok(named.data.signedUrl.endsWith('&download=report.txt'), named.data.signedUrl);
  const attached = await fetch(named.data.signedUrl);
  assert.equal(attached.status, 200);
  assert.match(attached.headers.get('content-disposition') ?? '', /^attachment;.*report\.txt/);
  await attached.arrayBuffer();

  // The returned signedURL is a raw path that storage-js passes through
  // encodeURI; a key with a space must survive the round trip.
  const spaced = `${uid}/with space.txt`;
  assert.equal((await files.upload(spaced, 'spaced', { contentType: 'text/plain' })).error, null);
  const spacedUrl = (await files.createSignedUrl(spaced, 60)).data.signedUrl;
  assert.ok(spacedUrl.includes('/with%20space.txt?token='), spacedUrl);
  const spacedGot = await fetch(spacedUrl);
  assert.equal(spacedGot.status, 200);
  assert.equal(await spacedGot.text(), 'spaced');

  // A token is bound to its object and to its signature.
  const token = new URL(signed.data.signedUrl).searchParams.get('token');
  await isErrorResponse(await fetch(`${storageUrl}/object/sign/${PRIVATE}/${uid}/with%20space.txt?token=${token}`), '400');
  const [head, claims, sig] = token.split('.');
  const tampered = `${head}.${claims}.${sig[0] === 'A' ? 'B' : 'A'}${sig.slice(1)}`;
  await isErrorResponse(await fetch(`${prefix}${tampered}`), '400');

  const brief = await files.createSignedUrl(path, 1);
  assert.equal(brief.error, null);
  await sleep(2500);
  const expired = await isErrorResponse(await fetch(brief.data.signedUrl), '400');
  assert.match(expired.message, /expired/i);

  const many = await files.createSignedUrls([path, `${uid}/missing.txt`], 60);
  assert.equal(many.error, null, JSON.stringify(many.error));
  assert.equal(many.data.length, 2);
  const [ok, missing] = many.data;
  assert.equal(ok.path, path);
  assert.equal(ok.error, null);
  assert.ok(ok.signedURL.startsWith(`/object/sign/${PRIVATE}/${path}?token=`), ok.signedURL);
  assert.ok(ok.signedUrl.startsWith(prefix), ok.signedUrl);
  assert.equal(await (await fetch(ok.signedUrl)).text(), 'signed content');
  assert.equal(missing.path, `${uid}/missing.txt`);
  assert.equal(typeof missing.error, 'string');
  assert.equal(missing.signedURL, null);
  assert.equal(missing.signedUrl, null);
});

test('signed upload URLs: created by a user who may insert, used by anyone once', async () => {
  const a = await newUser('uploader');
  const path = `${a.id}/via-signed.txt`;
  const signed = await a.files.createSignedUploadUrl(path);
  assert.equal(signed.error, null, JSON.stringify(signed.error));
  assert.equal(signed.data.path, path);
  assert.ok(signed.data.token);
  assert.ok(
    signed.data.signedUrl.startsWith(`${storageUrl}/object/upload/sign/${PRIVATE}/${path}?token=`),
    signed.data.signedUrl,
  );

  // The token carries the permission: an anon client can use it.
  const viaAnon = client().storage.from(PRIVATE);
  const up = await viaAnon.uploadToSignedUrl(path, signed.data.token, 'signed upload', { contentType: 'text/plain' });
  assert.equal(up.error, null, JSON.stringify(up.error));
  assert.deepEqual(up.data, { path, fullPath: `${PRIVATE}/${path}` });
  const got = await service.storage.from(PRIVATE).download(path);
  assert.equal(got.error, null);
  assert.equal(await got.data.text(), 'signed upload');
  assert.equal(got.data.type, 'text/plain');
  assert.equal(await (await a.files.download(path)).data.text(), 'signed upload');

  // Without upsert the object may be created only once.
  const reuse = await viaAnon.uploadToSignedUrl(path, signed.data.token, 'again', { contentType: 'text/plain' });
  isStorageError(reuse.error, '409', 'The resource already exists');

  // An upsert token replaces it; a Blob goes out as multipart.
  const upsert = await a.files.createSignedUploadUrl(path, { upsert: true });
  assert.equal(upsert.error, null);
  const replaced = await viaAnon.uploadToSignedUrl(path, upsert.data.token, new Blob(['replaced'], { type: 'text/plain' }));
  assert.equal(replaced.error, null, JSON.stringify(replaced.error));
  assert.equal(await (await service.storage.from(PRIVATE).download(path)).data.text(), 'replaced');

  // A token for one path does not upload to another.
  const elsewhere = await viaAnon.uploadToSignedUrl(`${a.id}/other.txt`, upsert.data.token, 'x', { contentType: 'text/plain' });
  assert.ok(elsewhere.error);

  // Whoever may not insert there does not get a URL.
  const b = await newUser('notuploader');
  isStorageError((await b.files.createSignedUploadUrl(`${a.id}/from-b.txt`)).error, '403');
});

test('public buckets serve getPublicUrl without headers; private buckets do not', async () => {
  const id = await newBucket('public', { public: true });
  const files = service.storage.from(id);
  assert.equal((await files.upload('docs/readme.txt', 'public body', { contentType: 'text/plain' })).error, null);

  const { data } = files.getPublicUrl('docs/readme.txt');
  assert.equal(data.publicUrl, `${storageUrl}/object/public/${id}/docs/readme.txt`);
  const r = await fetch(data.publicUrl);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'text/plain');
  assert.match(r.headers.get('etag'), ETAG);
  assert.equal(await r.text(), 'public body');

  const asDownload = files.getPublicUrl('docs/readme.txt', { download: true }).data.publicUrl;
  assert.ok(asDownload.endsWith('?download='), asDownload);
  const attached = await fetch(asDownload);
  assert.equal(attached.status, 200);
  assert.match(attached.headers.get('content-disposition') ?? '', /^attachment/);
  await attached.arrayBuffer();

  await isErrorResponse(await fetch(files.getPublicUrl('docs/nothing.txt').data.publicUrl), '404');

  // The same route on a private bucket: "Bucket not found" (HTTP 400).
  await ensurePrivateBucket();
  const hidden = `public-probe/${short()}.txt`;
  assert.equal((await service.storage.from(PRIVATE).upload(hidden, 'private body', { contentType: 'text/plain' })).error, null);
  const denied = await isErrorResponse(await fetch(service.storage.from(PRIVATE).getPublicUrl(hidden).data.publicUrl), '404');
  assert.equal(denied.message, 'Bucket not found');
  assert.equal((await service.storage.from(PRIVATE).remove([hidden])).error, null);

  // Making the bucket private closes the public route.
  assert.equal((await service.storage.updateBucket(id, { public: false })).error, null);
  await isErrorResponse(await fetch(data.publicUrl), '404');

  await dropBucket(id);
});

test('emptyBucket and deleteBucket: a non-empty bucket cannot be deleted', async () => {
  const id = await newBucket('trash');
  const files = service.storage.from(id);
  for (const name of ['one.txt', 'two.txt', 'a/b/c.txt']) {
    assert.equal((await files.upload(name, name, { contentType: 'text/plain' })).error, null);
  }

  // The root lists files and one entry per folder (id null).
  const root = await files.list();
  assert.equal(root.error, null);
  assert.deepEqual(root.data.map((o) => o.name), ['a', 'one.txt', 'two.txt']);
  assert.equal(root.data[0].id, null);
  assert.equal(root.data[0].metadata, null);
  assert.deepEqual((await files.list('a')).data.map((o) => o.name), ['b']);
  assert.deepEqual((await files.list('a/b/')).data.map((o) => o.name), ['c.txt']);
  assert.deepEqual((await files.list('', { search: 'tw' })).data.map((o) => o.name), ['two.txt']);

  const refused = await service.storage.deleteBucket(id);
  isStorageError(refused.error, '409', 'The bucket you tried to delete is not empty');
  assert.equal((await service.storage.getBucket(id)).error, null);

  const emptied = await service.storage.emptyBucket(id);
  assert.equal(emptied.error, null, JSON.stringify(emptied.error));
  assert.match(emptied.data.message, /^(Successfully emptied|Empty bucket has been queued)/);
  assert.deepEqual((await files.list()).data, []);
  isStorageError((await files.download('one.txt')).error, '404');

  const deleted = await service.storage.deleteBucket(id);
  assert.equal(deleted.error, null, JSON.stringify(deleted.error));
  assert.deepEqual(deleted.data, { message: 'Successfully deleted' });
  isStorageError((await service.storage.getBucket(id)).error, '404', 'Bucket not found');
  assert.ok(!(await service.storage.listBuckets()).data.some((b) => b.id === id));
  isStorageError((await service.storage.deleteBucket(id)).error, '404');
});

test('listV2 lists full keys under a string prefix, folders with the delimiter, pages by cursor', async () => {
  const id = await newBucket('v2');
  const bucket = service.storage.from(id);
  for (const name of ['top.txt', 'a/one.txt', 'a/two.txt', 'a/sub/deep.txt', 'a_b/x.txt']) {
    assert.equal((await bucket.upload(name, name, { contentType: 'text/plain' })).error, null);
  }
  const flat = await bucket.listV2({ prefix: 'a', limit: 2 });
  assert.equal(flat.error, null, JSON.stringify(flat.error));
  assert.deepEqual(flat.data.objects.map((o) => o.name), ['a/one.txt', 'a/sub/deep.txt']);
  assert.deepEqual(flat.data.folders, []);
  assert.equal(flat.data.hasNext, true);
  const next = await bucket.listV2({ prefix: 'a', limit: 2, cursor: flat.data.nextCursor });
  assert.deepEqual(next.data.objects.map((o) => o.name), ['a/two.txt', 'a_b/x.txt']);
  assert.equal(next.data.hasNext, false);
  const tree = await bucket.listV2({ prefix: 'a/', with_delimiter: true });
  assert.deepEqual(tree.data.folders.map((f) => f.name), ['a/sub/']);
  assert.deepEqual(tree.data.objects.map((o) => o.name), ['a/one.txt', 'a/two.txt']);
  assert.equal(tree.data.objects[0].metadata.size, 9);
  const bad = await bucket.listV2({ cursor: 'not a cursor' });
  isStorageError(bad.error, '400', 'Invalid Parameter continuation token');
  // Bucket search matches anywhere in the name.
  const found = await service.storage.listBuckets({ search: id.slice(4) });
  assert.equal(found.error, null, JSON.stringify(found.error));
  assert.deepEqual(found.data.map((b) => b.id), [id]);
  assert.match(found.data[0].created_at, /\.\d{3}Z$/);

  // info: metadata {} when none was given; exists() via HEAD.
  const info = await bucket.info('top.txt');
  assert.equal(info.error, null, JSON.stringify(info.error));
  assert.deepEqual(info.data.metadata, {});
  const head = await fetch(`${storageUrl}/object/info/${id}/top.txt`, {
    method: 'HEAD', headers: { apikey: serviceKey, authorization: `Bearer ${serviceKey}` },
  });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get('etag'), info.data.etag);

  // copy takes user metadata from x-metadata when not copying the source's.
  const copy = await fetch(`${storageUrl}/object/copy`, {
    method: 'POST',
    headers: {
      apikey: serviceKey, authorization: `Bearer ${serviceKey}`, 'content-type': 'application/json',
      'x-metadata': Buffer.from(JSON.stringify({ k: 'v' })).toString('base64'),
    },
    body: JSON.stringify({ bucketId: id, sourceKey: 'top.txt', destinationKey: 'copy.txt', copyMetadata: false }),
  });
  assert.equal(copy.status, 200);
  assert.deepEqual((await bucket.info('copy.txt')).data.metadata, { k: 'v' });
  assert.equal((await bucket.remove(['copy.txt'])).error, null);
  await dropBucket(id);
});

test('TUS OPTIONS, /version, and a request without any credential, as Supabase Storage answers them', async () => {
  const options = await fetch(`${storageUrl}/upload/resumable`, {
    method: 'OPTIONS',
    headers: { origin: 'http://localhost:3000', 'access-control-request-method': 'POST' },
  });
  assert.equal(options.status, 204);
  assert.equal(options.headers.get('tus-version'), '1.0.0');
  assert.match(options.headers.get('tus-extension'), /creation/);
  assert.match(options.headers.get('tus-max-size'), /^\d+$/);
  const unknown = await fetch(`${storageUrl}/upload/resumable/${randomUUID()}`, {
    method: 'HEAD', headers: { apikey: serviceKey, authorization: `Bearer ${serviceKey}`, 'tus-resumable': '1.0.0' },
  });
  assert.equal(unknown.status, 404);
  const version = await fetch(`${storageUrl}/version`);
  assert.equal(version.status, 200);
  assert.match(await version.text(), /^\d+\.\d+\.\d+/);
  const bare = await fetch(`${storageUrl}/bucket`);
  const body = await isErrorResponse(bare, '403');
  assert.equal(body.message, 'Invalid Compact JWS');
});
