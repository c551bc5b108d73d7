// Image transformations through the real supabase-js client (storage-js):
// getPublicUrl, download and createSignedUrl with `transform`, against the
// running sovra binary that run.sh started. The images are made here (a
// PNG written with node's zlib) and measured from their headers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SOVRA_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;
const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const service = createClient(url, serviceKey, opts);
const anon = createClient(url, anonKey, opts);

function crc32(bytes) {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'ascii');
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

// An RGB PNG of width x height with a gradient.
function png(width, height) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const at = y * (width * 3 + 1) + 1 + x * 3;
      raw[at] = x % 256;
      raw[at + 1] = y % 256;
      raw[at + 2] = 128;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

// Format and size of PNG or lossless WebP bytes, from their headers.
function measure(bytes) {
  const b = Buffer.from(bytes);
  if (b.subarray(1, 4).toString('ascii') === 'PNG') {
    return { format: 'png', width: b.readUInt32BE(16), height: b.readUInt32BE(20) };
  }
  if (b.subarray(0, 4).toString('ascii') === 'RIFF' && b.subarray(12, 16).toString('ascii') === 'VP8L') {
    const bits = b.readUInt32LE(21);
    return { format: 'webp', width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 };
  }
  return { format: 'unknown' };
}

async function newBucket(isPublic) {
  const id = `e2e-render-${randomUUID().slice(0, 8)}`;
  const { error } = await service.storage.createBucket(id, { public: isPublic });
  assert.equal(error, null, JSON.stringify(error));
  return id;
}

test('getPublicUrl with transform renders a resized image for anyone', async () => {
  const bucket = await newBucket(true);
  const files = service.storage.from(bucket);
  assert.equal((await files.upload('pics/a.png', png(400, 300), { contentType: 'image/png' })).error, null);
  const { data } = anon.storage.from(bucket).getPublicUrl('pics/a.png', {
    transform: { width: 100, height: 100, resize: 'contain' },
  });
  assert.match(data.publicUrl, /\/storage\/v1\/render\/image\/public\//);
  const r = await fetch(data.publicUrl);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'image/png');
  assert.deepEqual(measure(await r.arrayBuffer()), { format: 'png', width: 100, height: 75 });
  // A browser's Accept gets WebP, unless format=origin.
  const browser = { headers: { accept: 'image/avif,image/webp,*/*' } };
  const webp = await fetch(data.publicUrl, browser);
  assert.equal(webp.headers.get('content-type'), 'image/webp');
  assert.deepEqual(measure(await webp.arrayBuffer()), { format: 'webp', width: 100, height: 75 });
  const origin = anon.storage.from(bucket).getPublicUrl('pics/a.png', {
    transform: { width: 40, format: 'origin' },
  });
  const kept = await fetch(origin.data.publicUrl, browser);
  assert.deepEqual(measure(await kept.arrayBuffer()), { format: 'png', width: 40, height: 30 });
});

test('download with transform renders as the caller, under RLS', async () => {
  const bucket = await newBucket(false);
  const files = service.storage.from(bucket);
  assert.equal((await files.upload('b.png', png(300, 200), { contentType: 'image/png' })).error, null);
  const { data, error } = await files.download('b.png', {
    transform: { width: 60, height: 60, resize: 'cover', quality: 70 },
  });
  assert.equal(error, null, JSON.stringify(error));
  assert.deepEqual(measure(await data.arrayBuffer()), { format: 'png', width: 60, height: 60 });
  const fill = await files.download('b.png', { transform: { width: 50, height: 20, resize: 'fill' } });
  assert.deepEqual(measure(await fill.data.arrayBuffer()), { format: 'png', width: 50, height: 20 });
  // anon has no policy on this bucket: Storage's "Object not found".
  const refused = await anon.storage.from(bucket).download('b.png', { transform: { width: 60 } });
  assert.equal(refused.data, null);
  assert.equal(refused.error.name, 'StorageApiError');
  assert.equal(refused.error.statusCode, '404');
  // Bad options come back as Storage's validation errors.
  const bad = await files.download('b.png', { transform: { width: 60, quality: 5 } });
  assert.equal(bad.error.statusCode, '400');
  assert.equal(bad.error.message, 'querystring/quality must be >= 20');
});

test('createSignedUrl with transform signs the transformation into the URL', async () => {
  const bucket = await newBucket(false);
  const files = service.storage.from(bucket);
  assert.equal((await files.upload('c.png', png(400, 300), { contentType: 'image/png' })).error, null);
  const { data, error } = await files.createSignedUrl('c.png', 60, {
    transform: { width: 80, height: 80, resize: 'cover' },
  });
  assert.equal(error, null, JSON.stringify(error));
  assert.match(data.signedUrl, /\/storage\/v1\/render\/image\/sign\/.*\?token=/);
  const r = await fetch(data.signedUrl);
  assert.equal(r.status, 200);
  assert.ok(r.headers.get('expires'));
  assert.deepEqual(measure(await r.arrayBuffer()), { format: 'png', width: 80, height: 80 });
  // The options cannot be changed in the URL ...
  const widened = await fetch(`${data.signedUrl}&width=300`);
  assert.deepEqual(measure(await widened.arrayBuffer()), { format: 'png', width: 80, height: 80 });
  // ... nor in the token.
  const [head, claims, sig] = new URL(data.signedUrl).searchParams.get('token').split('.');
  const forged = JSON.parse(Buffer.from(claims, 'base64url').toString());
  forged.transformations = 'width:400,height:300';
  const tampered = new URL(data.signedUrl);
  tampered.searchParams.set('token', [head, Buffer.from(JSON.stringify(forged)).toString('base64url'), sig].join('.'));
  const refused = await fetch(tampered);
  assert.equal(refused.status, 400);
  assert.equal((await refused.json()).statusCode, '400');
  // With download, the signed transformed image is an attachment.
  const named = await files.createSignedUrl('c.png', 60, { transform: { width: 20 }, download: 'thumb.png' });
  const attached = await fetch(named.data.signedUrl);
  assert.match(attached.headers.get('content-disposition'), /^attachment; filename=thumb.png/);
  assert.deepEqual(measure(await attached.arrayBuffer()), { format: 'png', width: 20, height: 15 });
});
