// Vector buckets through the real supabase-js client (`storage.vectors`,
// storage-js's S3 Vectors API), against the running sovra binary that
// run.sh started with fixture.sql loaded. A worker with the service key
// makes bucket `e2e-vectors` and its indexes and stores embeddings whose
// metadata names an `owner`; the fixture's policies let signed-in users
// search only their own. Other buckets get fresh names.
//
// Errors: storage-js turns an error response into a StorageVectorsApiError
// whose `status` is the HTTP status and whose `statusCode` is the body's
// `statusCode`; vector errors carry their own HTTP status (404, 409, …)
// and S3 Vectors' codes in `code`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;

const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const service = createClient(url, serviceKey, opts);
const short = () => randomUUID().slice(0, 8);
const SHARED = 'e2e-vectors';

// Unit vectors along an axis, slightly tilted: close to each other per axis.
const unit = (axis, tilt = 0) => {
  const v = [0, 0, 0, 0];
  v[axis] = 1;
  v[(axis + 1) % 4] = tilt;
  return v;
};

let shared;
// The bucket the fixture's policies name, with index `docs` (cosine, 4
// dimensions), made once by the worker.
function ensureShared() {
  shared ??= (async () => {
    const made = await service.storage.vectors.createBucket(SHARED);
    if (made.error && made.error.status !== 409) throw made.error;
    const index = await service.storage.vectors.from(SHARED).createIndex({
      indexName: 'docs',
      dataType: 'float32',
      dimension: 4,
      distanceMetric: 'cosine',
      metadataConfiguration: { nonFilterableMetadataKeys: ['text'] },
    });
    if (index.error && index.error.status !== 409) throw index.error;
  })();
  return shared;
}

async function newUser(tag) {
  const address = `${tag}-${short()}@example.com`;
  const created = await service.auth.admin.createUser({ email: address, password: 'password1', email_confirm: true });
  assert.equal(created.error, null);
  const c = createClient(url, anonKey, opts);
  const signedIn = await c.auth.signInWithPassword({ email: address, password: 'password1' });
  assert.equal(signedIn.error, null);
  return { c, id: signedIn.data.user.id };
}

test('a worker makes buckets and indexes; get, list with paging, delete', async () => {
  const vectors = service.storage.vectors;
  const name = `e2e-v-${short()}`;
  assert.deepEqual(await vectors.createBucket(name), { data: {}, error: null });
  const got = await vectors.getBucket(name);
  assert.equal(got.error, null);
  assert.equal(got.data.vectorBucket.vectorBucketName, name);
  assert.equal(typeof got.data.vectorBucket.creationTime, 'number');

  const dup = await vectors.createBucket(name);
  assert.equal(dup.error.name, 'StorageVectorsApiError');
  assert.equal(dup.error.status, 409);
  assert.equal(dup.error.statusCode, '409');

  const bucket = vectors.from(name);
  for (const indexName of ['a-index', 'b-index', 'c-index']) {
    const made = await bucket.createIndex({ indexName, dataType: 'float32', dimension: 3, distanceMetric: 'euclidean' });
    assert.equal(made.error, null, JSON.stringify(made.error));
  }
  const index = await bucket.getIndex('b-index');
  assert.equal(index.error, null);
  assert.equal(index.data.index.dimension, 3);
  assert.equal(index.data.index.distanceMetric, 'euclidean');
  assert.equal(index.data.index.dataType, 'float32');

  const page1 = await bucket.listIndexes({ maxResults: 2 });
  assert.deepEqual(page1.data.indexes.map((i) => i.indexName), ['a-index', 'b-index']);
  const page2 = await bucket.listIndexes({ maxResults: 2, nextToken: page1.data.nextToken });
  assert.deepEqual(page2.data.indexes.map((i) => i.indexName), ['c-index']);
  assert.equal(page2.data.nextToken, undefined);

  const listed = await vectors.listBuckets({ prefix: name });
  assert.deepEqual(listed.data.vectorBuckets.map((b) => b.vectorBucketName), [name]);

  const notEmpty = await vectors.deleteBucket(name);
  assert.equal(notEmpty.error.status, 400);
  assert.equal(notEmpty.error.code, 'VectorBucketNotEmpty');
  for (const indexName of ['a-index', 'b-index', 'c-index']) {
    assert.equal((await bucket.deleteIndex(indexName)).error, null);
  }
  assert.deepEqual(await vectors.deleteBucket(name), { data: {}, error: null });
  const gone = await vectors.getBucket(name);
  assert.equal(gone.error.status, 404);
  assert.equal(gone.error.code, 'NotFoundException');
});

test('put, query with a filter, get, list with paging, delete', async () => {
  const name = `e2e-v-${short()}`;
  const vectors = service.storage.vectors;
  assert.equal((await vectors.createBucket(name)).error, null);
  const bucket = vectors.from(name);
  assert.equal((await bucket.createIndex({ indexName: 'emb', dataType: 'float32', dimension: 4, distanceMetric: 'cosine' })).error, null);
  const index = bucket.index('emb');
  const put = await index.putVectors({
    vectors: [
      { key: 'doc-1', data: { float32: unit(0) }, metadata: { lang: 'en', year: 2024 } },
      { key: 'doc-2', data: { float32: unit(0, 0.2) }, metadata: { lang: 'fr', year: 2023 } },
      { key: 'doc-3', data: { float32: unit(1) }, metadata: { lang: 'en', year: 2020 } },
      { key: 'doc-4', data: { float32: unit(2) }, metadata: { lang: 'de', year: 2024 } },
    ],
  });
  assert.deepEqual(put, { data: {}, error: null });

  const near = await index.queryVectors({ queryVector: { float32: unit(0) }, topK: 2, returnDistance: true, returnMetadata: true });
  assert.equal(near.error, null, JSON.stringify(near.error));
  assert.equal(near.data.distanceMetric, 'cosine');
  assert.deepEqual(near.data.vectors.map((v) => v.key), ['doc-1', 'doc-2']);
  assert.ok(near.data.vectors[0].distance < 1e-6);
  assert.equal(near.data.vectors[1].metadata.lang, 'fr');

  const filtered = await index.queryVectors({
    queryVector: { float32: unit(0) },
    topK: 10,
    filter: { $and: [{ lang: { $in: ['en', 'de'] } }, { year: { $gte: 2021 } }] },
  });
  assert.deepEqual(filtered.data.vectors.map((v) => v.key), ['doc-1', 'doc-4']);

  const got = await index.getVectors({ keys: ['doc-3', 'missing'], returnData: true, returnMetadata: true });
  assert.equal(got.data.vectors.length, 1);
  assert.deepEqual(got.data.vectors[0].data.float32, unit(1));
  assert.deepEqual(got.data.vectors[0].metadata, { lang: 'en', year: 2020 });

  const page1 = await index.listVectors({ maxResults: 3 });
  assert.deepEqual(page1.data.vectors.map((v) => v.key), ['doc-1', 'doc-2', 'doc-3']);
  const page2 = await index.listVectors({ maxResults: 3, nextToken: page1.data.nextToken });
  assert.deepEqual(page2.data.vectors.map((v) => v.key), ['doc-4']);
  assert.equal(page2.data.nextToken, undefined);

  assert.deepEqual(await index.deleteVectors({ keys: ['doc-1', 'doc-2'] }), { data: {}, error: null });
  const rest = await index.listVectors();
  assert.deepEqual(rest.data.vectors.map((v) => v.key), ['doc-3', 'doc-4']);

  assert.equal((await bucket.deleteIndex('emb')).error, null);
  assert.equal((await vectors.deleteBucket(name)).error, null);
});

test('refusals come back as StorageVectorsApiError with S3 Vectors codes', async () => {
  await ensureShared();
  const index = service.storage.vectors.from(SHARED).index('docs');
  const wrongDim = await index.putVectors({ vectors: [{ key: 'bad', data: { float32: [1, 2, 3] } }] });
  assert.equal(wrongDim.error.name, 'StorageVectorsApiError');
  assert.equal(wrongDim.error.status, 400);
  assert.equal(wrongDim.error.code, 'InvalidParameter');
  assert.match(wrongDim.error.message, /dimension/);

  const unknown = await service.storage.vectors.from(SHARED).index('nope').queryVectors({ queryVector: { float32: unit(0) }, topK: 1 });
  assert.equal(unknown.error.status, 404);
  assert.equal(unknown.error.code, 'NotFoundException');
  const noBucket = await service.storage.vectors.from('e2e-no-such-bucket').getIndex('docs');
  assert.equal(noBucket.error.status, 404);

  const badFilter = await index.queryVectors({ queryVector: { float32: unit(0) }, topK: 1, filter: { lang: { $regex: 'e.*' } } });
  assert.equal(badFilter.error.status, 400);
  assert.equal(badFilter.error.code, 'InvalidParameter');
  const nonFilterable = await index.queryVectors({ queryVector: { float32: unit(0) }, topK: 1, filter: { text: 'x' } });
  assert.equal(nonFilterable.error.status, 400);
  const topK = await index.queryVectors({ queryVector: { float32: unit(0) }, topK: 1000 });
  assert.equal(topK.error.status, 400);
  // JSON cannot carry NaN; a value beyond float32 is refused the same way.
  const overflow = await index.putVectors({ vectors: [{ key: 'big', data: { float32: [1e39, 0, 0, 0] } }] });
  assert.equal(overflow.error.status, 400);
  // storage-js checks the batch size itself before sending.
  await assert.rejects(index.putVectors({ vectors: [] }), /between 1 and 500/);
});

test('users search only their own vectors under RLS; anon sees nothing', async () => {
  await ensureShared();
  const alice = await newUser('vec-alice');
  const bob = await newUser('vec-bob');
  // The worker stores embeddings for both users with the service key.
  const worker = service.storage.vectors.from(SHARED).index('docs');
  const stored = await worker.putVectors({
    vectors: [
      { key: `a-${alice.id}-1`, data: { float32: unit(0) }, metadata: { owner: alice.id, text: 'alpha' } },
      { key: `a-${alice.id}-2`, data: { float32: unit(1) }, metadata: { owner: alice.id, text: 'beta' } },
      { key: `b-${bob.id}-1`, data: { float32: unit(0, 0.1) }, metadata: { owner: bob.id, text: 'gamma' } },
    ],
  });
  assert.equal(stored.error, null, JSON.stringify(stored.error));

  const search = (c) =>
    c.storage.vectors.from(SHARED).index('docs').queryVectors({ queryVector: { float32: unit(0) }, topK: 10, returnMetadata: true });
  const mine = await search(alice.c);
  assert.equal(mine.error, null, JSON.stringify(mine.error));
  assert.deepEqual(mine.data.vectors.map((v) => v.key), [`a-${alice.id}-1`, `a-${alice.id}-2`]);
  assert.equal(mine.data.vectors[0].metadata.text, 'alpha');
  const bobs = await search(bob.c);
  assert.deepEqual(bobs.data.vectors.map((v) => v.key), [`b-${bob.id}-1`]);

  // A user writes their own vectors, not someone else's.
  const own = await bob.c.storage.vectors.from(SHARED).index('docs').putVectors({
    vectors: [{ key: `b-${bob.id}-2`, data: { float32: unit(3) }, metadata: { owner: bob.id } }],
  });
  assert.equal(own.error, null, JSON.stringify(own.error));
  const forged = await bob.c.storage.vectors.from(SHARED).index('docs').putVectors({
    vectors: [{ key: `b-${bob.id}-3`, data: { float32: unit(3) }, metadata: { owner: alice.id } }],
  });
  assert.equal(forged.error.status, 403);

  // Users may not make buckets; anon sees no bucket and no index.
  const made = await alice.c.storage.vectors.createBucket(`e2e-v-${short()}`);
  assert.equal(made.error.status, 403);
  const anon = createClient(url, anonKey, opts);
  const anonSearch = await search(anon);
  assert.equal(anonSearch.error.status, 404);
  const anonList = await anon.storage.vectors.listBuckets();
  assert.deepEqual(anonList.data.vectorBuckets, []);
});
