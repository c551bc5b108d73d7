// The Metrics page's arithmetic (dashboard/src/metrics.js), without a
// browser: Prometheus' text format, rates and histogram quantiles.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { figures, parsePrometheus, quantileBetween } from '../../dashboard/src/metrics.js';

const before = parsePrometheus(`# TYPE sovra_http_requests_total counter
sovra_http_requests_total{method="GET",route="/rest/v1/{*path}",status="200"} 10
sovra_http_requests_total{method="GET",route="/rest/v1/{*path}",status="500"} 1
sovra_http_request_duration_seconds_bucket{method="GET",route="/rest/v1/{*path}",le="0.01"} 5
sovra_http_request_duration_seconds_bucket{method="GET",route="/rest/v1/{*path}",le="0.1"} 10
sovra_http_request_duration_seconds_bucket{method="GET",route="/rest/v1/{*path}",le="+Inf"} 11
sovra_db_pool_connections{tenant="default"} 4
sovra_db_pool_idle_connections{tenant="default"} 3
sovra_db_pool_max_connections{tenant="default"} 16
`);
const after = parsePrometheus(`sovra_http_requests_total{method="GET",route="/rest/v1/{*path}",status="200"} 28
sovra_http_requests_total{method="GET",route="/rest/v1/{*path}",status="500"} 3
sovra_http_request_duration_seconds_bucket{method="GET",route="/rest/v1/{*path}",le="0.01"} 15
sovra_http_request_duration_seconds_bucket{method="GET",route="/rest/v1/{*path}",le="0.1"} 30
sovra_http_request_duration_seconds_bucket{method="GET",route="/rest/v1/{*path}",le="+Inf"} 31
sovra_db_pool_connections{tenant="default"} 6
sovra_db_pool_idle_connections{tenant="default"} 1
sovra_db_pool_max_connections{tenant="default"} 16
sovra_realtime_connections 2
`);

test('samples are parsed with their labels, escaped quotes included', () => {
  const [sample] = parsePrometheus('x_total{a="1",b="say \\"hi\\""} 4.5\n# comment\n\nbad line');
  assert.deepEqual(sample, { name: 'x_total', labels: { a: '1', b: 'say "hi"' }, value: 4.5 });
  assert.equal(parsePrometheus('# only\n').length, 0);
});

test('rates, errors, pool use and quantiles between two scrapes', () => {
  const f = figures(before, after, 2);
  assert.equal(f.requestsPerSecond, 10);
  assert.equal(f.errorsPerSecond, 1);
  assert.equal(f.poolInUse, 5);
  assert.equal(f.poolMax, 16);
  assert.equal(f.realtimeConnections, 2);
  // 20 new observations: 10 up to 10 ms, 10 between 10 and 100 ms.
  assert.equal(f.p50ms, 10);
  assert.ok(Math.abs(f.p95ms - 91) < 1e-9, String(f.p95ms));
});

test('no observations means no quantile', () => {
  assert.equal(quantileBetween(after, after, 'sovra_http_request_duration_seconds', 0.5), null);
  assert.equal(figures(after, after, 1).p95ms, null);
  assert.equal(figures(after, before, 1).requestsPerSecond, 0);
});
