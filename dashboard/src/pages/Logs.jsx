// Recent requests of the tenant, from the server's bounded in-memory log:
// time, method, path (no query string), status, latency and request id.
import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { attempt, ErrorBox } from '../components.jsx';

export function Logs({ tenant }) {
  const [entries, setEntries] = useState([]);
  const [filter, setFilter] = useState('');
  const [errorsOnly, setErrorsOnly] = useState(false);
  const [live, setLive] = useState(true);
  const [error, setError] = useState(null);
  const load = () => attempt(setError, async () => setEntries((await api(`/t/${tenant}/logs`)).data || []));
  useEffect(() => {
    load();
    if (!live) return undefined;
    const timer = setInterval(load, 3000);
    return () => clearInterval(timer);
  }, [tenant, live]);
  const needle = filter.trim().toLowerCase();
  const shown = entries.filter(
    (e) =>
      (!errorsOnly || e.status >= 400) &&
      (!needle || [e.path, e.request_id, e.method, String(e.status)].some((v) => v.toLowerCase().includes(needle))),
  );
  return (
    <section>
      <h1>Logs</h1>
      <p class="hint">The last requests this server answered for the tenant (kept in memory, newest first; no query strings, bodies or keys).</p>
      <ErrorBox error={error} />
      <div class="toolbar">
        <label class="inline">
          Filter <input type="search" name="log-filter" value={filter} onInput={(e) => setFilter(e.currentTarget.value)} />
        </label>
        <label class="inline">
          <input type="checkbox" checked={errorsOnly} onChange={(e) => setErrorsOnly(e.currentTarget.checked)} /> Errors only
        </label>
        <label class="inline">
          <input type="checkbox" checked={live} onChange={(e) => setLive(e.currentTarget.checked)} /> Live
        </label>
        <button type="button" class="secondary" onClick={load}>
          Refresh
        </button>
      </div>
      <div class="scroll">
        <table class="grid" aria-label="Recent requests">
          <thead>
            <tr>
              <th scope="col">Time</th>
              <th scope="col">Method</th>
              <th scope="col">Path</th>
              <th scope="col">Status</th>
              <th scope="col">Latency</th>
              <th scope="col">Request id</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((e, i) => (
              <tr key={`${e.request_id}-${i}`} class={e.status >= 500 ? 'bad' : undefined}>
                <td>{new Date(e.at_ms).toLocaleTimeString()}</td>
                <td>{e.method}</td>
                <td title={e.route}>{e.path}</td>
                <td class="num">{e.status}</td>
                <td class="num">{e.latency_ms.toFixed(1)} ms</td>
                <td>
                  <code>{e.request_id}</code>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {shown.length === 0 && <p>No requests yet.</p>}
    </section>
  );
}
