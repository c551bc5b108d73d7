// A table's row-level security: turn it on or off, list, create, edit and
// drop its policies (the server builds the DDL from quoted names and runs
// it as the table's owner), and "test as user": the rows a chosen user
// sees, read in that user's request transaction.
import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { attempt, display, ErrorBox, Notice } from '../components.jsx';

const COMMANDS = ['ALL', 'SELECT', 'INSERT', 'UPDATE', 'DELETE'];
const EMPTY = { name: '', command: 'ALL', permissive: true, roles: 'authenticated', using: '', check: '' };

export function Policies({ tenant, schema, name, meta, onChange }) {
  const base = `/t/${tenant}/tables/${encodeURIComponent(schema)}/${encodeURIComponent(name)}`;
  const [editing, setEditing] = useState(null); // null, 'new' or the policy's name
  const [form, setForm] = useState(EMPTY);
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState('');

  const change = async (action, message) => {
    const done = await attempt(setError, action);
    if (done) {
      setNotice(message);
      setEditing(null);
      onChange();
    }
  };
  const toggle = () =>
    change(
      () => api(`${base}/rls`, { method: 'PUT', body: { enabled: !meta.rls } }),
      `Row-level security is ${meta.rls ? 'off' : 'on'}.`,
    );
  const startEdit = (policy) => {
    setEditing(policy ? policy.name : 'new');
    setForm(
      policy
        ? {
            name: policy.name,
            command: policy.command,
            permissive: policy.permissive === 'PERMISSIVE',
            roles: policy.roles.join(', '),
            using: policy.using || '',
            check: policy.check || '',
          }
        : EMPTY,
    );
  };
  const save = (event) => {
    event.preventDefault();
    const body = {
      ...form,
      roles: form.roles
        .split(',')
        .map((r) => r.trim())
        .filter(Boolean),
    };
    const isNew = editing === 'new';
    change(
      () =>
        api(isNew ? `${base}/policies` : `${base}/policies/${encodeURIComponent(editing)}`, {
          method: isNew ? 'POST' : 'PUT',
          body,
        }),
      `Policy ${form.name} ${isNew ? 'created' : 'saved'}.`,
    );
  };
  const drop = (policy) => {
    if (!confirm(`Drop policy ${policy.name}?`)) return;
    change(() => api(`${base}/policies/${encodeURIComponent(policy.name)}`, { method: 'DELETE' }), `Policy ${policy.name} dropped.`);
  };

  return (
    <section class="policies" aria-labelledby="policies-heading">
      <h2 id="policies-heading">Row-level security policies</h2>
      <ErrorBox error={error} />
      <Notice text={notice} />
      <div class="toolbar">
        <span data-rls>Row-level security is {meta.rls ? 'on' : 'off'}.</span>
        <button type="button" class="secondary" onClick={toggle}>
          {meta.rls ? 'Disable RLS' : 'Enable RLS'}
        </button>
        <button type="button" onClick={() => startEdit(null)}>
          New policy
        </button>
      </div>
      {!meta.rls && <p>Row-level security is off: every role with the privilege sees every row.</p>}
      {meta.policies.length === 0 ? (
        <p>No policies.</p>
      ) : (
        <ul>
          {meta.policies.map((p) => (
            <li key={p.name} data-policy={p.name}>
              <strong>{p.name}</strong> · {p.command} · {p.permissive.toLowerCase()} · to {p.roles.join(', ')}
              {p.using && (
                <div>
                  using <code>{p.using}</code>
                </div>
              )}
              {p.check && (
                <div>
                  with check <code>{p.check}</code>
                </div>
              )}
              <div class="actions">
                <button type="button" class="secondary" aria-label={`Edit policy ${p.name}`} onClick={() => startEdit(p)}>
                  Edit
                </button>
                <button type="button" class="danger" aria-label={`Drop policy ${p.name}`} onClick={() => drop(p)}>
                  Drop
                </button>
              </div>
            </li>
          ))}
        </ul>
      )}
      {editing && (
        <form class="card" onSubmit={save} aria-label={editing === 'new' ? 'New policy' : 'Edit policy'}>
          <h3>{editing === 'new' ? 'New policy' : `Edit policy ${editing}`}</h3>
          <label>
            Policy name
            <input name="policy-name" required value={form.name} onInput={(e) => setForm({ ...form, name: e.currentTarget.value })} />
          </label>
          <div class="filters">
            <label>
              Command
              <select value={form.command} onChange={(e) => setForm({ ...form, command: e.currentTarget.value })}>
                {COMMANDS.map((c) => (
                  <option key={c}>{c}</option>
                ))}
              </select>
            </label>
            <label>
              Kind
              <select
                value={form.permissive ? 'permissive' : 'restrictive'}
                onChange={(e) => setForm({ ...form, permissive: e.currentTarget.value === 'permissive' })}
              >
                <option value="permissive">permissive</option>
                <option value="restrictive">restrictive</option>
              </select>
            </label>
            <label>
              Roles (comma-separated; empty: public)
              <input name="policy-roles" value={form.roles} onInput={(e) => setForm({ ...form, roles: e.currentTarget.value })} />
            </label>
          </div>
          <label>
            Using (rows the role may see or change)
            <textarea class="code" rows={3} value={form.using} onInput={(e) => setForm({ ...form, using: e.currentTarget.value })} />
          </label>
          <label>
            With check (rows the role may write)
            <textarea class="code" rows={3} value={form.check} onInput={(e) => setForm({ ...form, check: e.currentTarget.value })} />
          </label>
          <div class="toolbar">
            <button type="submit">Save policy</button>
            <button type="button" class="secondary" onClick={() => setEditing(null)}>
              Cancel
            </button>
          </div>
        </form>
      )}
      <TestAsUser tenant={tenant} base={base} order={meta.columns.map((c) => c.name)} />
    </section>
  );
}

// Reads the table as a chosen user: their role and claims, the request
// prologue of /rest/v1, read-only; their policies decide the rows.
function TestAsUser({ tenant, base, order }) {
  const [users, setUsers] = useState([]);
  const [user, setUser] = useState('');
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    attempt(setError, async () => {
      const { data } = await api(`/t/${tenant}/auth/v1/admin/users?page=1&per_page=100`);
      const list = data.users || [];
      setUsers(list);
      if (list[0]) setUser(list[0].id);
    });
  }, [tenant]);
  const run = async (event) => {
    event.preventDefault();
    setResult(null);
    const done = await attempt(setError, () => api(`${base}/as-user`, { method: 'POST', body: { user_id: user } }));
    if (done) setResult(done.data);
  };
  // The table's column order (the rows' JSON objects come back sorted).
  const keys = result && result.rows.length ? Object.keys(result.rows[0]) : [];
  const columns = [...order.filter((c) => keys.includes(c)), ...keys.filter((c) => !order.includes(c))];
  return (
    <form class="card" onSubmit={run} aria-label="Test as user">
      <h3>Test as user</h3>
      <p class="hint">Reads this table as the user would through the API: their role and claims, their policies.</p>
      <div class="filters">
        <label>
          User
          <select name="as-user" aria-label="User" value={user} onChange={(e) => setUser(e.currentTarget.value)}>
            {users.map((u) => (
              <option value={u.id} key={u.id}>
                {u.email || u.phone || u.id}
              </option>
            ))}
          </select>
        </label>
        <button type="submit" disabled={!user}>
          Run as user
        </button>
      </div>
      <ErrorBox error={error} />
      {result && (
        <div data-as-user>
          <p class="meta">
            as role <code>{result.current_user}</code>, auth.uid() <code>{result.uid || 'null'}</code> ·{' '}
            <span data-as-user-count>{result.count}</span> rows visible
          </p>
          {result.rows.length > 0 && (
            <div class="scroll">
              <table class="grid" aria-label="Rows this user sees">
                <thead>
                  <tr>
                    {columns.map((c) => (
                      <th scope="col" key={c}>
                        {c}
                      </th>
                    ))}
                  </tr>
                </thead>
                <tbody>
                  {result.rows.map((row, i) => (
                    <tr key={i}>
                      {columns.map((c) => (
                        <td key={c}>{display(row[c])}</td>
                      ))}
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </div>
      )}
    </form>
  );
}
