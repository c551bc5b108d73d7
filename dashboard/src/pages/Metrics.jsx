import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from '../api.js';
import { ErrorBox } from '../components.jsx';
import { figures, parsePrometheus } from '../metrics.js';

const EVERY_MS = 3000;
const KEEP = 60;

// A line chart drawn as SVG: one or more series over the same samples.
export function LineChart({ title, unit, series, samples }) {
  const width = 560;
  const height = 160;
  const pad = { left: 48, right: 12, top: 12, bottom: 22 };
  const values = series.flatMap(({ key }) => samples.map((s) => s[key]).filter((v) => v !== null && v !== undefined));
  const max = Math.max(1, ...values) * 1.1;
  const x = (i) => pad.left + (i * (width - pad.left - pad.right)) / Math.max(1, KEEP - 1);
  const y = (v) => height - pad.bottom - (v / max) * (height - pad.top - pad.bottom);
  const offset = KEEP - samples.length;
  const latest = series.map(({ key, label }) => {
    const last = samples.length ? samples[samples.length - 1][key] : null;
    return `${label} ${last === null || last === undefined ? 'no data' : `${format(last)} ${unit}`}`;
  });
  return (
    <figure class="chart">
      <figcaption>
        <strong>{title}</strong> <span class="hint">{latest.join(' · ')}</span>
      </figcaption>
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label={`${title}: ${latest.join(', ')}`}>
        {[0, 0.5, 1].map((f) => (
          <g key={f}>
            <line class="grid-line" x1={pad.left} x2={width - pad.right} y1={y(max * f)} y2={y(max * f)} />
            <text class="axis" x={pad.left - 6} y={y(max * f) + 4} text-anchor="end">
              {format(max * f)}
            </text>
          </g>
        ))}
        <text class="axis" x={width - pad.right} y={height - 4} text-anchor="end">
          now
        </text>
        <text class="axis" x={pad.left} y={height - 4}>
          {`${Math.round((KEEP * EVERY_MS) / 1000)} s ago`}
        </text>
        {series.map(({ key, label }, n) => {
          const points = samples
            .map((s, i) => (s[key] === null || s[key] === undefined ? null : `${x(i + offset)},${y(s[key])}`))
            .filter(Boolean)
            .join(' ');
          const lastIndex = samples.length - 1;
          const last = lastIndex >= 0 ? samples[lastIndex][key] : null;
          return (
            <g key={key}>
              <polyline class={`series s${n}`} points={points} data-series={label} />
              {last !== null && last !== undefined && (
                <circle class={`dot s${n}`} cx={x(lastIndex + offset)} cy={y(last)} r="3.5" />
              )}
            </g>
          );
        })}
      </svg>
    </figure>
  );
}

function format(v) {
  if (Number.isInteger(v)) return String(v);
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

export function Metrics() {
  const [samples, setSamples] = useState([]);
  const [error, setError] = useState(null);
  const last = useRef(null);
  useEffect(() => {
    let stopped = false;
    const scrape = async () => {
      try {
        const response = await api('/metrics', { raw: true });
        const parsed = parsePrometheus(await response.text());
        const now = performance.now();
        if (last.current) {
          const seconds = (now - last.current.at) / 1000;
          const point = figures(last.current.samples, parsed, seconds);
          if (!stopped) setSamples((old) => [...old, point].slice(-KEEP));
        }
        last.current = { at: now, samples: parsed };
        setError(null);
      } catch (err) {
        setError(err);
      }
    };
    scrape();
    const timer = setInterval(scrape, EVERY_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, []);
  return (
    <section>
      <h1>Metrics</h1>
      <p class="hint">From this server's /metrics every {EVERY_MS / 1000} s, all tenants together, while this page is open.</p>
      <ErrorBox error={error} />
      {samples.length === 0 && !error && <p>Collecting the first interval…</p>}
      <div class="charts">
        <LineChart
          title="Requests"
          unit="/s"
          samples={samples}
          series={[
            { key: 'requestsPerSecond', label: 'all' },
            { key: 'errorsPerSecond', label: '5xx' },
          ]}
        />
        <LineChart
          title="Latency"
          unit="ms"
          samples={samples}
          series={[
            { key: 'p50ms', label: 'p50' },
            { key: 'p95ms', label: 'p95' },
          ]}
        />
        <LineChart
          title="Database pool"
          unit="connections"
          samples={samples}
          series={[
            { key: 'poolInUse', label: 'in use' },
            { key: 'poolMax', label: 'max' },
          ]}
        />
        <LineChart
          title="Realtime"
          unit="connections"
          samples={samples}
          series={[{ key: 'realtimeConnections', label: 'open' }]}
        />
      </div>
    </section>
  );
}
