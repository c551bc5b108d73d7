// The usage pictures' arithmetic (dashboard/src/usage.js), without a
// browser: bytes, gauges against quotas, the request bars.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatBytes, gauge, recentRate, requestBars } from '../../dashboard/src/usage.js';

test('bytes read as people write them', () => {
  assert.equal(formatBytes(0), '0 B');
  assert.equal(formatBytes(1023), '1023 B');
  assert.equal(formatBytes(1536), '1.5 KiB');
  assert.equal(formatBytes(1048576), '1 MiB');
  assert.equal(formatBytes(25 * 1048576), '25 MiB');
  assert.equal(formatBytes(null), 'unknown');
});

test('a gauge fills with the share of its quota and warns near it', () => {
  assert.deepEqual(gauge(50, 100), { fill: 0.5, level: 'ok', text: '50 of 100 (50%)', share: 0.5 });
  assert.equal(gauge(80, 100).level, 'warn');
  assert.equal(gauge(120, 100).level, 'over');
  assert.equal(gauge(120, 100).fill, 1);
  assert.deepEqual(gauge(7, 0), { fill: 0, level: 'ok', text: '7 (no quota)', share: null });
  assert.equal(gauge(null, 100).level, 'none');
  assert.equal(gauge(512, 1024, formatBytes).text, '512 B of 1 KiB (50%)');
});

test('request bars are scaled to the busiest bucket, errors within them', () => {
  const bars = requestBars([
    [0, 0, 0],
    [10, 1, 1],
    [5, 0, 5],
  ]);
  assert.deepEqual(
    bars.map((b) => [b.height, b.errors]),
    [
      [0, 0],
      [1, 0.2],
      [0.5, 0.5],
    ],
  );
  assert.equal(recentRate([[10, 0, 0], [20, 0, 0]], 10, 2), 1.5);
  assert.equal(recentRate([], 10), 0);
});
