import { useEffect, useRef, useState } from 'preact/hooks';
import { api, encodePath } from '../api.js';
import { attempt, ErrorBox, Notice } from '../components.jsx';
import { Link, navigate } from '../router.jsx';

// Files bigger than this go up resumably (TUS, in chunks of this size,
// each retried from the offset the server holds).
export const CHUNK = 6 * 1024 * 1024;
const TUS = { 'tus-resumable': '1.0.0' };

function tusMetadata(fields) {
  const b64 = (text) => btoa(String.fromCharCode(...new TextEncoder().encode(text)));
  return Object.entries(fields)
    .map(([name, value]) => `${name} ${b64(value)}`)
    .join(',');
}

// Uploads `file` to `bucket`/`path` through the dashboard's proxy with the
// TUS protocol; `progress(sent)` after each chunk.
async function resumable(base, bucket, path, file, progress) {
  const created = await api(`${base}/upload/resumable`, {
    method: 'POST',
    raw: true,
    headers: {
      ...TUS,
      'upload-length': String(file.size),
      'upload-metadata': tusMetadata({ bucketName: bucket, objectName: path, contentType: file.type || 'application/octet-stream' }),
      'x-upsert': 'true',
    },
  });
  const id = (created.headers.get('location') || '').split('/').pop();
  const url = `${base}/upload/resumable/${id}`;
  let offset = 0;
  let failures = 0;
  while (offset < file.size) {
    try {
      const sent = await api(url, {
        method: 'PATCH',
        raw: true,
        body: file.slice(offset, offset + CHUNK),
        headers: { ...TUS, 'upload-offset': String(offset), 'content-type': 'application/offset+octet-stream' },
      });
      offset = Number(sent.headers.get('upload-offset'));
      failures = 0;
      progress(offset);
    } catch (error) {
      // Resume from what the server holds, a few times.
      if (++failures > 3 || (error.status && error.status < 500 && error.status !== 409)) throw error;
      const head = await api(url, { method: 'HEAD', raw: true, headers: TUS });
      offset = Number(head.headers.get('upload-offset'));
    }
  }
}

export function Storage({ tenant, rest }) {
  const [bucket, ...folder] = rest.split('/').filter(Boolean).map(decodeURIComponent);
  if (bucket) return <Bucket tenant={tenant} bucket={bucket} prefix={folder.length ? `${folder.join('/')}/` : ''} key={rest} />;
  return <Buckets tenant={tenant} />;
}

function Buckets({ tenant }) {
  const base = `/t/${tenant}/storage/v1`;
  const [buckets, setBuckets] = useState([]);
  const [form, setForm] = useState({ name: '', public: false, limit: '' });
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState('');
  const load = () => attempt(setError, async () => setBuckets((await api(`${base}/bucket`)).data));
  useEffect(() => {
    load();
  }, [tenant]);
  const create = async (event) => {
    event.preventDefault();
    const body = { name: form.name, id: form.name, public: form.public };
    if (form.limit) body.file_size_limit = Number(form.limit);
    const done = await attempt(setError, () => api(`${base}/bucket`, { method: 'POST', body }));
    if (done) {
      setNotice(`Bucket ${form.name} created.`);
      setForm({ name: '', public: false, limit: '' });
      load();
    }
  };
  const remove = async (b) => {
    if (!confirm(`Delete bucket ${b.name}? It must be empty.`)) return;
    const done = await attempt(setError, () => api(`${base}/bucket/${encodeURIComponent(b.id)}`, { method: 'DELETE' }));
    if (done) {
      setNotice(`Bucket ${b.name} deleted.`);
      load();
    }
  };
  return (
    <section>
      <h1>Storage</h1>
      <ErrorBox error={error} />
      <Notice text={notice} />
      <form class="card inline-form" onSubmit={create} aria-label="Create bucket">
        <h2>Create a bucket</h2>
        <label>
          Name
          <input name="bucket" required value={form.name} onInput={(e) => setForm({ ...form, name: e.currentTarget.value })} />
        </label>
        <label>
          Size limit (bytes)
          <input type="number" min="1" name="limit" value={form.limit} onInput={(e) => setForm({ ...form, limit: e.currentTarget.value })} />
        </label>
        <label class="inline">
          <input type="checkbox" checked={form.public} onChange={(e) => setForm({ ...form, public: e.currentTarget.checked })} /> Public
        </label>
        <button type="submit">Create bucket</button>
      </form>
      <div class="scroll">
        <table class="grid" aria-label="Buckets">
          <thead>
            <tr>
              <th scope="col">Bucket</th>
              <th scope="col">Public</th>
              <th scope="col">Size limit</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {buckets.map((b) => (
              <tr key={b.id}>
                <td>
                  <Link href={`/t/${tenant}/storage/${encodeURIComponent(b.id)}`}>{b.name}</Link>
                </td>
                <td>{b.public ? 'yes' : 'no'}</td>
                <td>{b.file_size_limit || '—'}</td>
                <td class="actions">
                  <button type="button" class="danger" onClick={() => remove(b)}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {buckets.length === 0 && <p>No buckets yet.</p>}
    </section>
  );
}

function Bucket({ tenant, bucket, prefix }) {
  const base = `/t/${tenant}/storage/v1`;
  const [items, setItems] = useState([]);
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState('');
  const [busy, setBusy] = useState(false);
  const [progress, setProgress] = useState(null);
  const file = useRef(null);
  const load = () =>
    attempt(setError, async () => {
      const { data } = await api(`${base}/object/list/${encodeURIComponent(bucket)}`, {
        method: 'POST',
        body: { prefix, limit: 1000, offset: 0, sortBy: { column: 'name', order: 'asc' } },
      });
      setItems(data.filter((item) => item.name !== '.emptyFolderPlaceholder'));
    });
  useEffect(() => {
    load();
  }, [tenant, bucket, prefix]);
  const upload = async (event) => {
    event.preventDefault();
    const chosen = file.current && file.current.files[0];
    if (!chosen) return;
    setBusy(true);
    const done = await attempt(setError, async () => {
      if (chosen.size > CHUNK) {
        setProgress(0);
        await resumable(base, bucket, prefix + chosen.name, chosen, (sent) => setProgress(Math.floor((100 * sent) / chosen.size)));
        return true;
      }
      return api(`${base}/object/${encodeURIComponent(bucket)}/${encodePath(prefix + chosen.name)}`, {
        method: 'POST',
        body: chosen,
        headers: { 'content-type': chosen.type || 'application/octet-stream', 'x-upsert': 'true' },
      });
    });
    setBusy(false);
    setProgress(null);
    if (done) {
      setNotice(`Uploaded ${chosen.name}.`);
      file.current.value = '';
      load();
    }
  };
  const [signed, setSigned] = useState(null);
  const sign = async (name) => {
    const done = await attempt(setError, () =>
      api(`${base}/object/sign/${encodeURIComponent(bucket)}/${encodePath(prefix + name)}`, {
        method: 'POST',
        body: { expiresIn: 3600 },
      }),
    );
    if (done) {
      // The URL works without a key, for an hour, from anywhere.
      const root = tenant === 'default' ? '' : `/t/${tenant}`;
      setSigned({ name, url: `${location.origin}${root}/storage/v1${done.data.signedURL}` });
    }
  };
  const remove = async (name) => {
    if (!confirm(`Delete ${name}?`)) return;
    const done = await attempt(setError, () =>
      api(`${base}/object/${encodeURIComponent(bucket)}`, { method: 'DELETE', body: { prefixes: [prefix + name] } }),
    );
    if (done) {
      setNotice(`Deleted ${name}.`);
      load();
    }
  };
  const here = `/t/${tenant}/storage/${encodeURIComponent(bucket)}`;
  const crumbs = prefix.split('/').filter(Boolean);
  return (
    <section>
      <p class="crumbs">
        <Link href={`/t/${tenant}/storage`}>Storage</Link> / <Link href={here}>{bucket}</Link>
        {crumbs.map((c, i) => (
          <span key={i}>
            {' / '}
            <Link href={`${here}/${crumbs.slice(0, i + 1).map(encodeURIComponent).join('/')}`}>{c}</Link>
          </span>
        ))}
      </p>
      <h1>{bucket}</h1>
      <ErrorBox error={error} />
      <Notice text={notice} />
      <form class="card inline-form" onSubmit={upload} aria-label="Upload a file">
        <label>
          File
          <input type="file" name="file" ref={file} required />
        </label>
        <button type="submit" disabled={busy}>
          Upload
        </button>
        {progress !== null && (
          <progress max="100" value={progress} aria-label="Upload progress">
            {progress}%
          </progress>
        )}
        <span class="hint">Files over 6 MiB are sent resumably, in chunks.</span>
      </form>
      {signed && (
        <div class="card" role="region" aria-label="Signed URL">
          <label>
            Signed URL of {signed.name} (valid for an hour)
            <input readOnly value={signed.url} name="signed-url" onFocus={(e) => e.currentTarget.select()} />
          </label>
        </div>
      )}
      <div class="scroll">
        <table class="grid" aria-label={`Objects in ${bucket}`}>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Size</th>
              <th scope="col">Type</th>
              <th scope="col">Updated</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {items.map((item) =>
              item.id === null || !item.metadata ? (
                <tr key={item.name}>
                  <td>
                    <button type="button" class="link" onClick={() => navigate(`${here}/${encodePath(prefix + item.name)}`)}>
                      {item.name}/
                    </button>
                  </td>
                  <td colSpan={4}>folder</td>
                </tr>
              ) : (
                <tr key={item.name}>
                  <td>{item.name}</td>
                  <td class="num">{item.metadata.size}</td>
                  <td>{item.metadata.mimetype}</td>
                  <td>{item.updated_at ? new Date(item.updated_at).toLocaleString() : ''}</td>
                  <td class="actions">
                    <a
                      class="button secondary"
                      href={`/_/api${base}/object/${encodeURIComponent(bucket)}/${encodePath(prefix + item.name)}`}
                      download={item.name}
                    >
                      Download
                    </a>
                    <button type="button" class="secondary" onClick={() => sign(item.name)}>
                      Signed URL
                    </button>
                    <button type="button" class="danger" onClick={() => remove(item.name)}>
                      Delete
                    </button>
                  </td>
                </tr>
              ),
            )}
          </tbody>
        </table>
      </div>
      {items.length === 0 && <p>This folder is empty.</p>}
    </section>
  );
}
