// The S3 protocol (/storage/v1/s3) through the real AWS SDK for JavaScript
// (@aws-sdk/client-s3), configured as Supabase's guide configures it
// (forcePathStyle, the endpoint, region `local`), beside the real
// supabase-js: an S3 access key made through the API acts as the service;
// a session token (access key id = project ref, secret = anon key, session
// token = the user's access token from supabase-js) acts as that user,
// under the fixture's RLS policies on bucket `e2e-private`. Objects written
// by one client are read by the other.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import {
  S3Client,
  ListBucketsCommand,
  CreateBucketCommand,
  PutObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  CopyObjectCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  DeleteBucketCommand,
  CreateMultipartUploadCommand,
  UploadPartCommand,
  CompleteMultipartUploadCommand,
} from '@aws-sdk/client-s3';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;
const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const service = createClient(url, serviceKey, opts);
const short = () => randomUUID().slice(0, 8);
const PRIVATE = 'e2e-private';
const endpoint = `${url}/storage/v1/s3`;

function s3(credentials) {
  return new S3Client({ forcePathStyle: true, region: 'local', endpoint, credentials, maxAttempts: 1 });
}

async function accessKey() {
  const response = await fetch(`${url}/storage/v1/s3-credentials`, {
    method: 'POST',
    headers: { apikey: serviceKey, authorization: `Bearer ${serviceKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ description: 'e2e' }),
  });
  assert.equal(response.status, 200);
  const body = await response.json();
  return { accessKeyId: body.access_key, secretAccessKey: body.secret_key };
}

async function errorCode(promise) {
  try {
    await promise;
  } catch (err) {
    return err.name;
  }
  return 'no error';
}

test('an S3 access key: buckets, objects, listing, copy, multipart, deletes', async () => {
  const client = s3(await accessKey());
  const bucket = `e2e-s3-${short()}`;
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  const buckets = await client.send(new ListBucketsCommand({}));
  assert.ok(buckets.Buckets.some((b) => b.Name === bucket));

  await client.send(new PutObjectCommand({
    Bucket: bucket, Key: 'docs/readme.txt', Body: 'hello from the AWS SDK',
    ContentType: 'text/plain', Metadata: { source: 'sdk' },
  }));
  // supabase-js reads what the SDK wrote.
  const { data: blob, error } = await service.storage.from(bucket).download('docs/readme.txt');
  assert.equal(error, null);
  assert.equal(await blob.text(), 'hello from the AWS SDK');
  // The SDK reads what supabase-js wrote, with a range.
  const uploaded = await service.storage.from(bucket).upload('docs/from-js.txt', new Blob(['written by supabase-js']), { contentType: 'text/plain' });
  assert.equal(uploaded.error, null);
  const ranged = await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'docs/from-js.txt', Range: 'bytes=11-22' }));
  assert.equal(await ranged.Body.transformToString(), 'supabase-js');
  const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: 'docs/readme.txt' }));
  assert.equal(head.ContentLength, 22);
  assert.deepEqual(head.Metadata, { source: 'sdk' });

  await client.send(new CopyObjectCommand({ Bucket: bucket, Key: 'top.txt', CopySource: `${bucket}/docs/readme.txt` }));
  const listed = await client.send(new ListObjectsV2Command({ Bucket: bucket, Delimiter: '/' }));
  assert.deepEqual(listed.Contents.map((o) => o.Key), ['top.txt']);
  assert.deepEqual(listed.CommonPrefixes.map((p) => p.Prefix), ['docs/']);

  // Multipart: 5 MiB and a tail.
  const part1 = Buffer.alloc(5 * 1024 * 1024, 7);
  const { UploadId } = await client.send(new CreateMultipartUploadCommand({ Bucket: bucket, Key: 'big.bin' }));
  const p1 = await client.send(new UploadPartCommand({ Bucket: bucket, Key: 'big.bin', UploadId, PartNumber: 1, Body: part1 }));
  const p2 = await client.send(new UploadPartCommand({ Bucket: bucket, Key: 'big.bin', UploadId, PartNumber: 2, Body: 'tail' }));
  await client.send(new CompleteMultipartUploadCommand({
    Bucket: bucket, Key: 'big.bin', UploadId,
    MultipartUpload: { Parts: [{ PartNumber: 1, ETag: p1.ETag }, { PartNumber: 2, ETag: p2.ETag }] },
  }));
  const big = await client.send(new GetObjectCommand({ Bucket: bucket, Key: 'big.bin' }));
  const bytes = Buffer.from(await big.Body.transformToByteArray());
  assert.equal(bytes.length, part1.length + 4);
  assert.equal(bytes.subarray(part1.length).toString(), 'tail');

  assert.equal(await errorCode(client.send(new DeleteBucketCommand({ Bucket: bucket }))), 'BucketNotEmpty');
  const deleted = await client.send(new DeleteObjectsCommand({
    Bucket: bucket,
    Delete: { Objects: ['docs/readme.txt', 'docs/from-js.txt', 'top.txt'].map((Key) => ({ Key })) },
  }));
  assert.equal(deleted.Deleted.length, 3);
  await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: 'big.bin' }));
  await client.send(new DeleteBucketCommand({ Bucket: bucket }));
  assert.equal(await errorCode(client.send(new GetObjectCommand({ Bucket: bucket, Key: 'x' }))), 'NoSuchKey');

  const wrong = s3({ accessKeyId: 'SVNOSUCHKEY000000000', secretAccessKey: 'x' });
  assert.equal(await errorCode(wrong.send(new ListBucketsCommand({}))), 'InvalidAccessKeyId');
});

test('a session token from supabase-js acts as its user under RLS', async () => {
  const created = await service.storage.createBucket(PRIVATE, { public: false });
  if (created.error && created.error.statusCode !== '409') throw created.error;
  const address = `s3-${short()}@example.com`;
  const made = await service.auth.admin.createUser({ email: address, password: 'password1', email_confirm: true });
  assert.equal(made.error, null);
  const supabase = createClient(url, anonKey, opts);
  const { data, error } = await supabase.auth.signInWithPassword({ email: address, password: 'password1' });
  assert.equal(error, null);
  const uid = data.user.id;
  const client = s3({ accessKeyId: 'default', secretAccessKey: anonKey, sessionToken: data.session.access_token });

  await client.send(new PutObjectCommand({ Bucket: PRIVATE, Key: `${uid}/note.txt`, Body: 'mine', ContentType: 'text/plain' }));
  const read = await supabase.storage.from(PRIVATE).download(`${uid}/note.txt`);
  assert.equal(read.error, null);
  assert.equal(await read.data.text(), 'mine');
  const listed = await client.send(new ListObjectsV2Command({ Bucket: PRIVATE, Prefix: `${uid}/` }));
  assert.deepEqual(listed.Contents.map((o) => o.Key), [`${uid}/note.txt`]);
  // RLS: another user's folder is out of reach.
  assert.equal(
    await errorCode(client.send(new PutObjectCommand({ Bucket: PRIVATE, Key: `${randomUUID()}/x.txt`, Body: 'x' }))),
    'AccessDenied',
  );
  const all = await client.send(new ListObjectsV2Command({ Bucket: PRIVATE }));
  assert.ok((all.Contents ?? []).every((o) => o.Key.startsWith(`${uid}/`)));
  // A token that is not the user's is refused.
  const forged = s3({ accessKeyId: 'default', secretAccessKey: anonKey, sessionToken: `${data.session.access_token}x` });
  assert.equal(await errorCode(forged.send(new ListObjectsV2Command({ Bucket: PRIVATE }))), 'AccessDenied');
});

test('opaque API keys stand for their role as session tokens', async () => {
  const secretKey = process.env.SOVRA_SECRET_KEY;
  const publishableKey = process.env.SOVRA_PUBLISHABLE_KEY;
  assert.ok(secretKey?.startsWith('sb_secret_') && publishableKey?.startsWith('sb_publishable_'));
  const created = await service.storage.createBucket(PRIVATE, { public: false });
  if (created.error && created.error.statusCode !== '409') throw created.error;
  const key = `${randomUUID()}/opaque.txt`;
  const put = await service.storage.from(PRIVATE).upload(key, new Blob(['by the service']));
  assert.equal(put.error, null);
  // sb_secret_…: the service role, past RLS.
  const asService = s3({ accessKeyId: 'default', secretAccessKey: anonKey, sessionToken: secretKey });
  const got = await asService.send(new GetObjectCommand({ Bucket: PRIVATE, Key: key }));
  assert.equal(await got.Body.transformToString(), 'by the service');
  // sb_publishable_…: anon, which no policy lets see the bucket's objects.
  const asAnon = s3({ accessKeyId: 'default', secretAccessKey: anonKey, sessionToken: publishableKey });
  assert.equal(await errorCode(asAnon.send(new GetObjectCommand({ Bucket: PRIVATE, Key: key }))), 'NoSuchKey');
  const forged = s3({ accessKeyId: 'default', secretAccessKey: anonKey, sessionToken: `${secretKey}x` });
  assert.equal(await errorCode(forged.send(new ListBucketsCommand({}))), 'AccessDenied');
});
