// Usage per tenant against its quotas, as pictures: the requests of the
// last minutes as bars (errors in red), and gauges of database size,
// stored bytes, realtime connections and pool use against their quotas.
// Fed by GET /_/api/usage every 10 s while it is shown.
import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { attempt, ErrorBox } from '../components.jsx';
import { formatBytes, gauge, recentRate, requestBars } from '../usage.js';

const EVERY_MS = 10000;

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

function Gauge({ label, value, max, format, name }) {
  const g = gauge(value, max, format);
  return (
    <div class={`gauge ${g.level}`} data-gauge={name}>
      <div class="gauge-label">
        <span>{label}</span> <span class="hint">{g.text}</span>
      </div>
      <svg viewBox="0 0 100 8" preserveAspectRatio="none" role="img" aria-label={`${label}: ${g.text}`}>
        <rect class="track" x="0" y="0" width="100" height="8" rx="2" />
        {g.fill > 0 && <rect class="fill" x="0" y="0" width={Math.max(1, g.fill * 100)} height="8" rx="2" />}
      </svg>
    </div>
  );
}

function RequestBars({ requests, bucketSeconds }) {
  const bars = requestBars(requests.window);
  const width = 240;
  const height = 48;
  const step = width / Math.max(1, bars.length);
  const minutes = Math.round((bars.length * bucketSeconds) / 60);
  const errors = requests.client_errors + requests.server_errors;
  const text = `${plural(requests.total, 'request')}, ${plural(errors, 'error')} (${requests.server_errors} from the server) in the last ${minutes} minutes; ${recentRate(requests.window, bucketSeconds).toFixed(1)} per second in the last minute`;
  return (
    <figure class="bars" data-requests={requests.total} data-errors={errors}>
      <figcaption class="hint">{text}</figcaption>
      <svg viewBox={`0 0 ${width} ${height}`} preserveAspectRatio="none" role="img" aria-label={`Requests: ${text}`}>
        <line class="base" x1="0" x2={width} y1={height - 0.5} y2={height - 0.5} />
        {bars.map((b, i) =>
          b.requests ? (
            <g key={i}>
              <rect class="ok" x={i * step + 0.5} y={height - b.height * height} width={Math.max(1, step - 1)} height={b.height * height} />
              {b.errors > 0 && <rect class="err" x={i * step + 0.5} y={height - b.errors * height} width={Math.max(1, step - 1)} height={b.errors * height} />}
            </g>
          ) : null,
        )}
      </svg>
    </figure>
  );
}

export function UsageCard({ tenant, bucketSeconds }) {
  const t = tenant;
  return (
    <article class="card usage" aria-label={`Usage of ${t.name}`} data-usage={t.name}>
      <h3>
        {t.name} <span class="hint">{t.state}{t.running ? '' : ' · not running on this server now'}</span>
      </h3>
      <RequestBars requests={t.requests} bucketSeconds={bucketSeconds} />
      <Gauge name="database" label="Database" value={t.database.bytes} max={t.database.max_bytes} format={formatBytes} />
      <Gauge name="storage" label="Storage" value={t.storage.bytes} max={t.storage.max_bytes} format={formatBytes} />
      <Gauge name="realtime" label="Realtime connections" value={t.realtime.connections} max={t.realtime.max_connections} />
      <Gauge name="pool" label="Pool connections in use" value={t.pool.in_use} max={t.pool.max} />
    </article>
  );
}

export function Usage() {
  const [usage, setUsage] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    const load = () => attempt(setError, async () => setUsage((await api('/usage')).data));
    load();
    const timer = setInterval(load, EVERY_MS);
    return () => clearInterval(timer);
  }, []);
  return (
    <section aria-label="Usage per tenant">
      <h2>Usage</h2>
      <ErrorBox error={error} />
      {usage && (
        <div class="usages">
          {usage.tenants.map((t) => (
            <UsageCard key={t.name} tenant={t} bucketSeconds={usage.bucket_seconds} />
          ))}
        </div>
      )}
    </section>
  );
}
