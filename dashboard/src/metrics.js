// Reads Prometheus' text format into samples and turns two scrapes into
// the figures the Metrics page draws. Pure: no DOM, no fetch.

// [{ name, labels: {…}, value }] of every sample line.
export function parsePrometheus(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!match) continue;
    const labels = {};
    if (match[2]) {
      for (const pair of match[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[pair[1]] = pair[2].replace(/\\(.)/g, '$1');
      }
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

function sum(samples, name, keep = () => true) {
  return samples.filter((s) => s.name === name && keep(s.labels)).reduce((total, s) => total + s.value, 0);
}

// Cumulative histogram buckets by upper bound, summed over every series.
function buckets(samples, name) {
  const byBound = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket`) continue;
    const bound = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
    byBound.set(bound, (byBound.get(bound) || 0) + s.value);
  }
  return [...byBound.entries()].sort((a, b) => a[0] - b[0]);
}

// The quantile q of the observations between two scrapes, interpolated
// inside its bucket as Prometheus' histogram_quantile does; null without
// observations.
export function quantileBetween(before, after, name, q) {
  const old = new Map(buckets(before, name));
  const delta = buckets(after, name).map(([bound, count]) => [bound, count - (old.get(bound) || 0)]);
  const total = delta.length ? delta[delta.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const [bound, count] of delta) {
    if (count >= rank) {
      if (bound === Infinity) return lowerBound;
      const inBucket = count - lowerCount;
      return inBucket > 0 ? lowerBound + ((bound - lowerBound) * (rank - lowerCount)) / inBucket : bound;
    }
    lowerBound = bound;
    lowerCount = count;
  }
  return lowerBound;
}

// The figures of one interval between scrapes `before` and `after`,
// `seconds` apart.
export function figures(before, after, seconds) {
  const requests = (s) => sum(s, 'sovra_http_requests_total');
  const errors = (s) => sum(s, 'sovra_http_requests_total', (l) => Number(l.status) >= 500);
  const latency = 'sovra_http_request_duration_seconds';
  const p50 = quantileBetween(before, after, latency, 0.5);
  const p95 = quantileBetween(before, after, latency, 0.95);
  return {
    requestsPerSecond: Math.max(0, (requests(after) - requests(before)) / seconds),
    errorsPerSecond: Math.max(0, (errors(after) - errors(before)) / seconds),
    p50ms: p50 === null ? null : p50 * 1000,
    p95ms: p95 === null ? null : p95 * 1000,
    poolInUse: sum(after, 'sovra_db_pool_connections') - sum(after, 'sovra_db_pool_idle_connections'),
    poolMax: sum(after, 'sovra_db_pool_max_connections'),
    realtimeConnections: sum(after, 'sovra_realtime_connections'),
  };
}
