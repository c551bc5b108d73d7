import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import './style.css';
import { api, setCsrf, whenSignedOut } from './api.js';
import { Link, navigate, usePath } from './router.jsx';
import { SignIn } from './pages/SignIn.jsx';
import { Tables } from './pages/Tables.jsx';
import { Sql } from './pages/Sql.jsx';
import { Users } from './pages/Users.jsx';
import { Storage } from './pages/Storage.jsx';
import { Tenants } from './pages/Tenants.jsx';
import { Metrics } from './pages/Metrics.jsx';
import { Logs } from './pages/Logs.jsx';
import { Jobs } from './pages/Jobs.jsx';
import { Realtime } from './pages/Realtime.jsx';

const PAGES = [
  ['tables', 'Tables'],
  ['sql', 'SQL editor'],
  ['auth', 'Auth'],
  ['storage', 'Storage'],
  ['realtime', 'Realtime'],
  ['jobs', 'Jobs'],
  ['logs', 'Logs'],
];

function App() {
  const path = usePath();
  // undefined: asking; null: signed out; otherwise the session.
  const [session, setSession] = useState(undefined);
  const [tenants, setTenants] = useState([]);

  const signedOut = () => {
    setCsrf('');
    setSession(null);
  };

  useEffect(() => {
    whenSignedOut(signedOut);
    api('/session')
      .then(({ data }) => {
        setCsrf(data.csrf);
        setSession(data);
      })
      .catch(signedOut);
  }, []);

  useEffect(() => {
    if (!session) return;
    api('/tenants')
      .then(({ data }) => setTenants(data))
      .catch(() => setTenants([]));
  }, [session, path === '/tenants']);

  if (session === undefined) return <p class="loading">Loading…</p>;
  if (session === null) {
    return (
      <SignIn
        onSignedIn={(data) => {
          setCsrf(data.csrf);
          setSession(data);
          const tenant = data.tenant || 'default';
          if (!path.startsWith('/t/') && !['/tenants', '/metrics'].includes(path)) navigate(`/t/${tenant}/tables`, { replace: true });
        }}
      />
    );
  }

  const match = path.match(/^\/t\/([^/]+)(?:\/([^/]+))?(?:\/(.*))?$/);
  const tenant = match ? decodeURIComponent(match[1]) : session.tenant || 'default';
  const page = match ? match[2] || 'tables' : ['/tenants', '/metrics'].includes(path) ? path.slice(1) : null;
  const rest = match && match[3] ? match[3] : '';
  if (!page) {
    navigate(`/t/${tenant}/tables`, { replace: true });
    return null;
  }

  const signOut = async () => {
    try {
      await api('/session', { method: 'DELETE' });
    } finally {
      signedOut();
      navigate('/', { replace: true });
    }
  };

  return (
    <div class="shell">
      <header class="top">
        <a class="skip" href="#main">Skip to content</a>
        <span class="brand">Sovra</span>
        <div class="picker">
          <label for="tenant-picker">Tenant</label>
          <select
            id="tenant-picker"
            value={tenant}
            onChange={(event) => navigate(`/t/${event.currentTarget.value}/${['tenants', 'metrics'].includes(page) ? 'tables' : page}`)}
          >
            {(tenants.length ? tenants : [{ name: tenant }]).map((t) => (
              <option value={t.name} key={t.name}>
                {t.name}
                {t.state === 'suspended' ? ' (suspended)' : ''}
              </option>
            ))}
          </select>
        </div>
        <span class="who">{session.kind === 'platform' ? 'platform key' : `service key of ${session.tenant}`}</span>
        <button type="button" class="secondary" onClick={signOut}>
          Sign out
        </button>
      </header>
      <nav class="side" aria-label="Pages">
        <ul>
          {PAGES.map(([id, label]) => (
            <li key={id}>
              <Link href={`/t/${tenant}/${id}`} aria-current={page === id ? 'page' : undefined}>
                {label}
              </Link>
            </li>
          ))}
          {session.kind === 'platform' && (
            <>
              <li>
                <Link href="/tenants" aria-current={page === 'tenants' ? 'page' : undefined}>
                  Tenants
                </Link>
              </li>
              <li>
                <Link href="/metrics" aria-current={page === 'metrics' ? 'page' : undefined}>
                  Metrics
                </Link>
              </li>
            </>
          )}
        </ul>
      </nav>
      <main id="main" tabIndex={-1}>
        {page === 'tables' && <Tables tenant={tenant} rest={rest} key={`tables-${tenant}`} />}
        {page === 'sql' && <Sql tenant={tenant} key={`sql-${tenant}`} />}
        {page === 'auth' && <Users tenant={tenant} key={`auth-${tenant}`} />}
        {page === 'storage' && <Storage tenant={tenant} rest={rest} key={`storage-${tenant}`} />}
        {page === 'tenants' && <Tenants onChange={() => api('/tenants').then(({ data }) => setTenants(data))} />}
        {page === 'metrics' && <Metrics />}
        {page === 'logs' && <Logs tenant={tenant} key={`logs-${tenant}`} />}
        {page === 'jobs' && <Jobs tenant={tenant} key={`jobs-${tenant}`} />}
        {page === 'realtime' && <Realtime tenant={tenant} key={`realtime-${tenant}`} />}
        {!['tables', 'sql', 'auth', 'storage', 'realtime', 'jobs', 'logs', 'tenants', 'metrics'].includes(page) && <p>No such page.</p>}
      </main>
    </div>
  );
}

render(<App />, document.getElementById('app'));
