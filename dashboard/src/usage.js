// The arithmetic of the usage pictures (Tenants page): what one gauge
// shows of a figure against its quota, and the request bars of the
// window. Pure: no DOM, no fetch.

// 1536 -> "1.5 KiB".
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return 'unknown';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : Number(value.toFixed(value < 10 ? 1 : 0))} ${units[unit]}`;
}

// A gauge of `value` against `max` (0 or absent: no quota). The fill is
// the share of the quota (capped at 1); without a quota there is no share.
// level: "ok", "warn" (from 80%), "over" (at or past the quota), "none"
// (no figure: the tenant is not running here).
export function gauge(value, max, format = String) {
  if (value === null || value === undefined) {
    return { fill: 0, level: 'none', text: 'not running here', share: null };
  }
  if (!max) return { fill: 0, level: 'ok', text: `${format(value)} (no quota)`, share: null };
  const share = value / max;
  const level = share >= 1 ? 'over' : share >= 0.8 ? 'warn' : 'ok';
  return { fill: Math.min(1, share), level, text: `${format(value)} of ${format(max)} (${Math.round(share * 100)}%)`, share };
}

// The bars of the request window ([[requests, 4xx, 5xx], …], oldest first):
// each bucket's height as a share of the busiest, its errors' share of it.
export function requestBars(window) {
  const peak = Math.max(1, ...window.map(([requests]) => requests));
  return window.map(([requests, clientErrors, serverErrors]) => ({
    height: requests / peak,
    errors: requests ? (clientErrors + serverErrors) / peak : 0,
    requests,
    clientErrors,
    serverErrors,
  }));
}

// Requests per second over the last `buckets` buckets of the window.
export function recentRate(window, bucketSeconds, buckets = 6) {
  const recent = window.slice(-buckets);
  const total = recent.reduce((sum, [requests]) => sum + requests, 0);
  return total / (recent.length * bucketSeconds || 1);
}
