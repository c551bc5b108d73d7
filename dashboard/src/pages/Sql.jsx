import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from '../api.js';

// Line and column of a 1-based character position in `text`.
function lineColumn(text, position) {
  const before = [...text].slice(0, position - 1).join('');
  const lines = before.split('\n');
  return { line: lines.length, column: lines[lines.length - 1].length + 1 };
}

// The line PostgreSQL complained about, with a caret under the spot.
function Pointer({ query, position }) {
  const { line, column } = lineColumn(query, position);
  const text = query.split('\n')[line - 1] || '';
  return (
    <div data-position={position}>
      {`at line ${line}, column ${column} (character ${position})`}
      <pre class="pointer" aria-hidden="true">
        {`${text}\n${' '.repeat(column - 1)}^`}
      </pre>
    </div>
  );
}

export function Sql({ tenant }) {
  const [query, setQuery] = useState('select now();');
  const [results, setResults] = useState(null);
  const [failure, setFailure] = useState(null);
  const [history, setHistory] = useState([]);
  const [busy, setBusy] = useState(false);
  const editor = useRef(null);

  const loadHistory = () =>
    api(`/t/${tenant}/sql/history`)
      .then(({ data }) => setHistory(data))
      .catch(() => {});
  useEffect(() => {
    loadHistory();
  }, [tenant]);

  const run = async (event) => {
    if (event) event.preventDefault();
    setBusy(true);
    setFailure(null);
    setResults(null);
    try {
      const { data } = await api(`/t/${tenant}/sql`, { method: 'POST', body: { query } });
      setResults(data.results);
    } catch (err) {
      const detail = (err.body && err.body.detail) || { message: err.message };
      setFailure(detail);
      if (detail.position && editor.current) {
        // Puts the cursor where PostgreSQL saw the error.
        const at = [...query].slice(0, detail.position - 1).join('').length;
        editor.current.focus();
        editor.current.setSelectionRange(at, at);
      }
    } finally {
      setBusy(false);
      loadHistory();
    }
  };
  const onKeyDown = (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === 'Enter') run(event);
  };

  return (
    <section>
      <h1>SQL editor</h1>
      <p class="hint">
        Runs as <code>service_role</code> in this tenant's database, in one transaction (rolled back on error). Ctrl+Enter
        runs.
      </p>
      <form onSubmit={run}>
        <label for="sql">Statements</label>
        <textarea
          id="sql"
          ref={editor}
          class="code"
          rows={8}
          spellcheck={false}
          value={query}
          onInput={(e) => setQuery(e.currentTarget.value)}
          onKeyDown={onKeyDown}
        />
        <div class="toolbar">
          <button type="submit" disabled={busy}>
            Run
          </button>
        </div>
      </form>
      {failure && (
        <div class="error" role="alert" data-sql-error>
          <strong>{failure.code ? `ERROR ${failure.code}: ` : 'ERROR: '}</strong>
          {failure.message}
          {failure.position && <Pointer query={query} position={failure.position} />}
          {failure.detail && <div>{failure.detail}</div>}
          {failure.hint && <div>Hint: {failure.hint}</div>}
        </div>
      )}
      {results &&
        results.map((set, i) => (
          <div class="result" key={i}>
            <p class="meta">
              {set.columns.length ? `${set.row_count} row${set.row_count === 1 ? '' : 's'}` : `OK, ${set.row_count} affected`}
              {set.truncated && ' (first 1000 shown)'}
            </p>
            {set.columns.length > 0 && (
              <div class="scroll">
                <table class="grid" aria-label={`Result ${i + 1}`}>
                  <thead>
                    <tr>
                      {set.columns.map((c, j) => (
                        <th scope="col" key={j}>
                          {c}
                        </th>
                      ))}
                    </tr>
                  </thead>
                  <tbody>
                    {set.rows.map((row, r) => (
                      <tr key={r}>
                        {row.map((v, j) => (
                          <td key={j}>{v === null ? <span class="null">NULL</span> : v}</td>
                        ))}
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </div>
        ))}
      {history.length > 0 && (
        <section class="history">
          <h2>History (this session)</h2>
          <ul>
            {history.map((h, i) => (
              <li key={i}>
                <button type="button" class="link code" onClick={() => setQuery(h)}>
                  {h.length > 120 ? `${h.slice(0, 120)}…` : h}
                </button>
              </li>
            ))}
          </ul>
        </section>
      )}
    </section>
  );
}
