import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { attempt, ErrorBox, Notice } from '../components.jsx';
import { ApiKeys, AuthSettings, InviteCodes, UserDetails } from './AuthExtras.jsx';

const PER_PAGE = 50;

export function Users({ tenant }) {
  const base = `/t/${tenant}/auth/v1/admin`;
  const [users, setUsers] = useState([]);
  const [page, setPage] = useState(1);
  const [total, setTotal] = useState(null);
  const [search, setSearch] = useState('');
  const [form, setForm] = useState({ email: '', password: '', confirm: true });
  const [mail, setMail] = useState(null);
  const [selected, setSelected] = useState(null);
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState('');

  const load = () =>
    attempt(setError, async () => {
      const { data, headers } = await api(`${base}/users?page=${page}&per_page=${PER_PAGE}`);
      setUsers(data.users || []);
      const count = headers.get('x-total-count');
      setTotal(count ? Number(count) : null);
    });
  useEffect(() => {
    load();
  }, [tenant, page]);

  const create = async (event) => {
    event.preventDefault();
    const done = await attempt(setError, () =>
      api(`${base}/users`, {
        method: 'POST',
        body: { email: form.email, password: form.password || undefined, email_confirm: form.confirm },
      }),
    );
    if (done) {
      setNotice(`User ${form.email} created.`);
      setForm({ email: '', password: '', confirm: true });
      load();
    }
  };
  const invite = async () => {
    if (!form.email) return;
    const done = await attempt(setError, () => api(`/t/${tenant}/auth/v1/invite`, { method: 'POST', body: { email: form.email } }));
    if (done) {
      setNotice(`Invitation sent to ${form.email}.`);
      setForm({ email: '', password: '', confirm: true });
      load();
      if (mail) loadMail();
    }
  };
  const ban = async (user, banned) => {
    const done = await attempt(setError, () =>
      api(`${base}/users/${user.id}`, { method: 'PUT', body: { ban_duration: banned ? '876000h' : 'none' } }),
    );
    if (done) {
      setNotice(banned ? `${user.email || user.id} is banned.` : `${user.email || user.id} may sign in again.`);
      load();
    }
  };
  const remove = async (user) => {
    if (!confirm(`Delete ${user.email || user.id}?`)) return;
    const done = await attempt(setError, () => api(`${base}/users/${user.id}`, { method: 'DELETE' }));
    if (done) {
      setNotice(`${user.email || user.id} deleted.`);
      load();
    }
  };
  const loadMail = () => attempt(setError, async () => setMail((await api(`${base}/mailbox`)).data));

  const needle = search.trim().toLowerCase();
  const shown = needle
    ? users.filter((u) => [u.email, u.phone, u.id].some((v) => v && v.toLowerCase().includes(needle)))
    : users;
  const banned = (u) => u.banned_until && new Date(u.banned_until) > new Date();
  const messages = mail ? (Array.isArray(mail) ? mail : mail.messages || []) : [];

  return (
    <section>
      <h1>Auth</h1>
      <ErrorBox error={error} />
      <Notice text={notice} />
      <form class="card inline-form" onSubmit={create} aria-label="Create user">
        <h2>Create a user</h2>
        <label>
          Email
          <input name="email" type="email" required value={form.email} onInput={(e) => setForm({ ...form, email: e.currentTarget.value })} />
        </label>
        <label>
          Password
          <input
            name="password"
            type="password"
            autocomplete="new-password"
            value={form.password}
            onInput={(e) => setForm({ ...form, password: e.currentTarget.value })}
          />
        </label>
        <label class="inline">
          <input type="checkbox" checked={form.confirm} onChange={(e) => setForm({ ...form, confirm: e.currentTarget.checked })} /> Email
          confirmed
        </label>
        <button type="submit">Create user</button>
        <button type="button" class="secondary" onClick={invite}>
          Send invitation
        </button>
      </form>
      <label class="inline">
        Search this page{' '}
        <input type="search" name="search" value={search} onInput={(e) => setSearch(e.currentTarget.value)} />
      </label>
      <div class="scroll">
        <table class="grid" aria-label="Users">
          <thead>
            <tr>
              <th scope="col">Email or phone</th>
              <th scope="col">Created</th>
              <th scope="col">Last sign-in</th>
              <th scope="col">State</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((u) => (
              <tr key={u.id}>
                <td>{u.email || u.phone || (u.is_anonymous ? '(anonymous)' : u.id)}</td>
                <td>{u.created_at ? new Date(u.created_at).toLocaleString() : ''}</td>
                <td>{u.last_sign_in_at ? new Date(u.last_sign_in_at).toLocaleString() : '—'}</td>
                <td>{banned(u) ? 'banned' : u.email_confirmed_at || u.phone_confirmed_at ? 'confirmed' : 'unconfirmed'}</td>
                <td class="actions">
                  <button type="button" class="secondary" onClick={() => setSelected(u)}>
                    Details
                  </button>
                  <button type="button" class="secondary" onClick={() => ban(u, !banned(u))}>
                    {banned(u) ? 'Unban' : 'Ban'}
                  </button>
                  <button type="button" class="danger" onClick={() => remove(u)}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <div class="toolbar">
        <button type="button" class="secondary" disabled={page === 1} onClick={() => setPage(page - 1)}>
          Previous
        </button>
        <span>
          Page {page}
          {total !== null ? ` · ${total} users` : ''}
        </span>
        <button
          type="button"
          class="secondary"
          disabled={total !== null ? page * PER_PAGE >= total : users.length < PER_PAGE}
          onClick={() => setPage(page + 1)}
        >
          Next
        </button>
      </div>
      {selected && <UserDetails tenant={tenant} user={selected} key={selected.id} onClose={() => setSelected(null)} />}
      <section>
        <h2>Local mailbox</h2>
        <p class="hint">Mail and text messages Auth would have sent (no SMTP server configured).</p>
        <button type="button" class="secondary" onClick={loadMail}>
          {mail ? 'Refresh mailbox' : 'Show mailbox'}
        </button>
        {mail && messages.length === 0 && <p>The mailbox is empty.</p>}
        {messages.length > 0 && (
          <ul class="mail">
            {messages.map((m, i) => (
              <li key={m.id || i}>
                <strong>{m.subject}</strong> to {m.to} · {m.kind} · {new Date(m.sent_at * 1000).toLocaleString()}
                <pre class="body">{m.body}</pre>
              </li>
            ))}
          </ul>
        )}
      </section>
      <InviteCodes tenant={tenant} />
      <ApiKeys tenant={tenant} />
      <AuthSettings tenant={tenant} />
    </section>
  );
}
