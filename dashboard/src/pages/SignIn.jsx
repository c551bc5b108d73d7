import { useState } from 'preact/hooks';
import { api } from '../api.js';
import { ErrorBox } from '../components.jsx';

export function SignIn({ onSignedIn }) {
  const [key, setKey] = useState('');
  const [tenant, setTenant] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const { data } = await api('/session', { method: 'POST', body: { key, tenant: tenant || undefined } });
      setKey('');
      onSignedIn(data);
    } catch (err) {
      setError(err.status === 401 ? new Error('That key was not accepted.') : err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin" id="main">
      <h1>Sovra</h1>
      <form onSubmit={submit} class="card">
        <h2>Sign in to the dashboard</h2>
        <p class="hint">
          Use the platform key (all tenants; <code>sovra keys</code> prints it) or a tenant's service_role key.
        </p>
        <label>
          Key
          <input
            name="key"
            type="password"
            autocomplete="off"
            required
            value={key}
            onInput={(e) => setKey(e.currentTarget.value)}
          />
        </label>
        <label>
          Tenant <span class="hint">(for a service key; empty: the default tenant)</span>
          <input name="tenant" value={tenant} onInput={(e) => setTenant(e.currentTarget.value)} />
        </label>
        <ErrorBox error={error} />
        <button type="submit" disabled={busy}>
          Sign in
        </button>
      </form>
    </main>
  );
}
