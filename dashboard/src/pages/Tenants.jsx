import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { attempt, ErrorBox, Notice } from '../components.jsx';
import { Link } from '../router.jsx';
import { Usage } from './Usage.jsx';

const QUOTAS = [
  ['requests_per_second', 'Requests per second'],
  ['max_concurrent_requests', 'Concurrent requests'],
  ['pool_size', 'Pool size'],
  ['storage_max_bytes', 'Storage bytes'],
  ['database_max_bytes', 'Database bytes'],
  ['mails_per_hour', 'Mails per hour'],
  ['realtime_max_connections', 'Realtime connections'],
];

export function Tenants({ onChange }) {
  const [tenants, setTenants] = useState([]);
  const [name, setName] = useState('');
  const [editing, setEditing] = useState(null);
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState('');
  const load = () => attempt(setError, async () => setTenants((await api('/platform/tenants')).data));
  useEffect(() => {
    load();
  }, []);
  const changed = (text) => {
    setNotice(text);
    load();
    onChange();
  };
  const create = async (event) => {
    event.preventDefault();
    const done = await attempt(setError, () => api('/platform/tenants', { method: 'POST', body: { name } }));
    if (done) {
      setName('');
      changed(`Tenant ${done.data.name} created at ${done.data.url}. Its service key: sovra tenants show ${done.data.name}.`);
    }
  };
  const act = async (tenant, action) => {
    if (action === 'delete' && !confirm(`Delete tenant ${tenant.name} with its database and files?`)) return;
    const done = await attempt(setError, () =>
      action === 'delete'
        ? api(`/platform/tenants/${tenant.name}`, { method: 'DELETE' })
        : api(`/platform/tenants/${tenant.name}/${action}`, { method: 'POST' }),
    );
    if (done) changed(`Tenant ${tenant.name}: ${action === 'delete' ? 'deleted' : `${action}ed`}.`);
  };
  const saveQuotas = async (event) => {
    event.preventDefault();
    const body = {};
    for (const [field] of QUOTAS) {
      const value = editing.values[field];
      if (value !== '' && value !== undefined) body[field] = Number(value);
    }
    const done = await attempt(setError, () => api(`/platform/tenants/${editing.name}`, { method: 'PATCH', body }));
    if (done) {
      setEditing(null);
      changed(`Quotas of ${editing.name} saved.`);
    }
  };
  return (
    <section>
      <h1>Tenants</h1>
      <ErrorBox error={error} />
      <Notice text={notice} />
      <form class="card inline-form" onSubmit={create} aria-label="Create tenant">
        <h2>Create a tenant</h2>
        <label>
          Name
          <input name="tenant-name" required pattern="[a-z][a-z0-9\-]*" value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </label>
        <button type="submit">Create tenant</button>
      </form>
      <div class="scroll">
        <table class="grid" aria-label="Tenants">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">State</th>
              <th scope="col">Database</th>
              <th scope="col">Created</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {tenants.map((t) => (
              <tr key={t.name}>
                <td>
                  <Link href={`/t/${t.name}/tables`}>{t.name}</Link>
                </td>
                <td>
                  {t.state}
                  {t.read_only ? ' (read-only: over its database quota)' : ''}
                </td>
                <td>{t.database}</td>
                <td>{t.created_at ? new Date(t.created_at).toLocaleString() : ''}</td>
                <td class="actions">
                  <button
                    type="button"
                    class="secondary"
                    onClick={() =>
                      setEditing({
                        name: t.name,
                        values: Object.fromEntries(QUOTAS.map(([f]) => [f, t.settings && t.settings[f] != null ? String(t.settings[f]) : ''])),
                      })
                    }
                  >
                    Quotas
                  </button>
                  <button type="button" class="secondary" onClick={() => act(t, t.state === 'suspended' ? 'resume' : 'suspend')}>
                    {t.state === 'suspended' ? 'Resume' : 'Suspend'}
                  </button>
                  <button type="button" class="danger" onClick={() => act(t, 'delete')}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {tenants.length === 0 && <p>No tenants besides the default one.</p>}
      <Usage />
      {editing && (
        <form class="card" onSubmit={saveQuotas} aria-label={`Quotas of ${editing.name}`}>
          <h2>Quotas of {editing.name}</h2>
          <p class="hint">Empty: the platform's default. Saving restarts the tenant at its next request.</p>
          {QUOTAS.map(([field, label]) => (
            <label key={field}>
              {label}
              <input
                type="number"
                min="0"
                name={field}
                value={editing.values[field]}
                onInput={(e) => setEditing({ ...editing, values: { ...editing.values, [field]: e.currentTarget.value } })}
              />
            </label>
          ))}
          <div class="toolbar">
            <button type="submit">Save quotas</button>
            <button type="button" class="secondary" onClick={() => setEditing(null)}>
              Cancel
            </button>
          </div>
        </form>
      )}
    </section>
  );
}
