// The Auth page's other parts: a user's sessions (end one or all) and MFA
// factors (reset), invite codes, API keys, and the providers and settings
// Auth publishes.
import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { attempt, ErrorBox, Notice } from '../components.jsx';

const when = (value) => (value ? new Date(typeof value === 'number' ? value * 1000 : value).toLocaleString() : '—');

export function UserDetails({ tenant, user, onClose }) {
  const label = user.email || user.phone || user.id;
  const sessionsPath = `/t/${tenant}/users/${user.id}/sessions`;
  const factorsPath = `/t/${tenant}/auth/v1/admin/users/${user.id}/factors`;
  const [sessions, setSessions] = useState(null);
  const [factors, setFactors] = useState(null);
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState('');
  const load = () =>
    attempt(setError, async () => {
      setSessions((await api(sessionsPath)).data);
      const listed = (await api(factorsPath)).data;
      setFactors(Array.isArray(listed) ? listed : listed.factors || []);
    });
  useEffect(() => {
    load();
  }, [tenant, user.id]);
  const end = async (session) => {
    const done = await attempt(setError, () =>
      api(session ? `${sessionsPath}/${session.id}` : sessionsPath, { method: 'DELETE' }),
    );
    if (done) {
      setNotice(session ? 'Session ended.' : `${done.data.ended} sessions ended.`);
      load();
    }
  };
  const resetMfa = async () => {
    if (!confirm(`Remove every MFA factor of ${label}?`)) return;
    const done = await attempt(setError, async () => {
      for (const factor of factors) await api(`${factorsPath}/${factor.id}`, { method: 'DELETE' });
      return true;
    });
    if (done) {
      setNotice('MFA reset: the user signs in with their first factor only.');
      load();
    }
  };
  return (
    <section class="card" aria-label={`User ${label}`}>
      <h2>{label}</h2>
      <p class="meta">
        id <code>{user.id}</code> · role {user.role || 'authenticated'}
      </p>
      <ErrorBox error={error} />
      <Notice text={notice} />
      <h3>Sessions</h3>
      {sessions && sessions.length === 0 && <p>No sessions.</p>}
      {sessions && sessions.length > 0 && (
        <div class="scroll">
          <table class="grid" aria-label="Sessions">
            <thead>
              <tr>
                <th scope="col">Started</th>
                <th scope="col">Refreshed</th>
                <th scope="col">Level</th>
                <th scope="col">Client</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {sessions.map((s) => (
                <tr key={s.id}>
                  <td>{when(s.created_at)}</td>
                  <td>{when(s.refreshed_at)}</td>
                  <td>{s.aal}</td>
                  <td>{[s.ip, s.user_agent].filter(Boolean).join(' · ') || '—'}</td>
                  <td class="actions">
                    <button type="button" class="danger" onClick={() => end(s)}>
                      End session
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <div class="toolbar">
        <button type="button" class="danger" disabled={!sessions || sessions.length === 0} onClick={() => end(null)}>
          End all sessions
        </button>
      </div>
      <h3>MFA factors</h3>
      {factors && factors.length === 0 && <p>No MFA factors.</p>}
      {factors && factors.length > 0 && (
        <ul>
          {factors.map((f) => (
            <li key={f.id}>
              {f.friendly_name || f.factor_type} · {f.factor_type} · {f.status}
            </li>
          ))}
        </ul>
      )}
      <div class="toolbar">
        <button type="button" class="danger" disabled={!factors || factors.length === 0} onClick={resetMfa}>
          Reset MFA
        </button>
        <button type="button" class="secondary" onClick={onClose}>
          Close
        </button>
      </div>
    </section>
  );
}

export function InviteCodes({ tenant }) {
  const base = `/t/${tenant}/auth/v1/admin/invite_codes`;
  const [codes, setCodes] = useState([]);
  const [note, setNote] = useState('');
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  const load = () => attempt(setError, async () => setCodes((await api(base)).data || []));
  useEffect(() => {
    load();
  }, [tenant]);
  const create = async (event) => {
    event.preventDefault();
    const done = await attempt(setError, () => api(base, { method: 'POST', body: { note: note || undefined } }));
    if (done) {
      setCreated(done.data);
      setNote('');
      load();
    }
  };
  const remove = async (code) => {
    const done = await attempt(setError, () => api(`${base}/${code.id}`, { method: 'DELETE' }));
    if (done) load();
  };
  const list = Array.isArray(codes) ? codes : codes.codes || [];
  return (
    <section aria-labelledby="invite-codes">
      <h2 id="invite-codes">Invite codes</h2>
      <ErrorBox error={error} />
      <form class="inline-form" onSubmit={create} aria-label="Create invite code">
        <label>
          Note
          <input name="invite-note" value={note} onInput={(e) => setNote(e.currentTarget.value)} />
        </label>
        <button type="submit">Create invite code</button>
      </form>
      {created && (
        <p class="notice" role="status">
          New code (shown once): <code data-invite-code>{created.code}</code>
        </p>
      )}
      {list.length === 0 ? (
        <p>No invite codes.</p>
      ) : (
        <ul>
          {list.map((c) => (
            <li key={c.id}>
              {c.note || '(no note)'} · created {when(c.created_at)} · {c.used_at ? `used ${when(c.used_at)}` : 'unused'}{' '}
              <button type="button" class="link" aria-label={`Delete invite code ${c.note || c.id}`} onClick={() => remove(c)}>
                delete
              </button>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

export function ApiKeys({ tenant }) {
  const base = `/t/${tenant}/auth/v1/admin/api_keys`;
  const [keys, setKeys] = useState([]);
  const [form, setForm] = useState({ name: '', role: 'service_role' });
  const [created, setCreated] = useState(null);
  const [error, setError] = useState(null);
  const load = () => attempt(setError, async () => setKeys((await api(base)).data || []));
  useEffect(() => {
    load();
  }, [tenant]);
  const create = async (event) => {
    event.preventDefault();
    const done = await attempt(setError, () => api(base, { method: 'POST', body: form }));
    if (done) {
      setCreated(done.data);
      setForm({ name: '', role: 'service_role' });
      load();
    }
  };
  const revoke = async (key) => {
    if (!confirm(`Revoke API key ${key.name}? Clients using it are refused at once.`)) return;
    const done = await attempt(setError, () => api(`${base}/${key.id}`, { method: 'DELETE' }));
    if (done) load();
  };
  const list = Array.isArray(keys) ? keys : keys.keys || [];
  return (
    <section aria-labelledby="api-keys">
      <h2 id="api-keys">API keys</h2>
      <ErrorBox error={error} />
      <form class="inline-form" onSubmit={create} aria-label="Create API key">
        <label>
          Key name
          <input name="key-name" required value={form.name} onInput={(e) => setForm({ ...form, name: e.currentTarget.value })} />
        </label>
        <label>
          Role
          <select value={form.role} onChange={(e) => setForm({ ...form, role: e.currentTarget.value })}>
            <option>service_role</option>
            <option>anon</option>
          </select>
        </label>
        <button type="submit">Create API key</button>
      </form>
      {created && (
        <p class="notice" role="status">
          Key {created.name} (copy it now; it is not shown again): <code data-api-key>{created.key}</code>
        </p>
      )}
      {list.length === 0 ? (
        <p>No API keys.</p>
      ) : (
        <ul>
          {list.map((k) => (
            <li key={k.id} data-key-name={k.name}>
              {k.name} · {k.role} · {k.revoked_at ? `revoked ${when(k.revoked_at)}` : 'active'}{' '}
              {!k.revoked_at && (
                <button type="button" class="link" aria-label={`Revoke API key ${k.name}`} onClick={() => revoke(k)}>
                  revoke
                </button>
              )}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

export function AuthSettings({ tenant }) {
  const [settings, setSettings] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    attempt(setError, async () => setSettings((await api(`/t/${tenant}/auth/v1/settings`)).data));
  }, [tenant]);
  if (!settings) return <ErrorBox error={error} />;
  const providers = Object.entries(settings.external || {});
  const flags = Object.entries(settings).filter(([, v]) => typeof v !== 'object');
  return (
    <section aria-labelledby="auth-settings">
      <h2 id="auth-settings">Providers and settings</h2>
      <p class="hint">As Auth publishes them (GET /auth/v1/settings); they are set in Sovra's configuration.</p>
      <div class="scroll">
        <table class="grid" aria-label="Providers">
          <thead>
            <tr>
              <th scope="col">Provider</th>
              <th scope="col">Enabled</th>
            </tr>
          </thead>
          <tbody>
            {providers.map(([name, on]) => (
              <tr key={name}>
                <td>{name}</td>
                <td>{on ? 'yes' : 'no'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <ul>
        {flags.map(([name, value]) => (
          <li key={name}>
            {name}: <code>{String(value)}</code>
          </li>
        ))}
      </ul>
    </section>
  );
}
