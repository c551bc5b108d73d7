// Background work of the tenant: pgmq queues (metrics, send, read), cron
// jobs with their last runs, and webhook (pg_net) deliveries with the dead
// letters, which can be replayed.
import { useEffect, useState } from 'preact/hooks';
import { api } from '../api.js';
import { attempt, ErrorBox, Notice } from '../components.jsx';

const when = (value) => (value ? new Date(value).toLocaleString() : '—');

export function Jobs({ tenant }) {
  const base = `/t/${tenant}/jobs`;
  const [jobs, setJobs] = useState(null);
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState('');
  const [queueName, setQueueName] = useState('');
  const load = () => attempt(setError, async () => setJobs((await api(base)).data));
  useEffect(() => {
    load();
  }, [tenant]);
  const createQueue = async (event) => {
    event.preventDefault();
    const done = await attempt(setError, () => api(`${base}/queues`, { method: 'POST', body: { name: queueName } }));
    if (done) {
      setNotice(`Queue ${queueName} created.`);
      setQueueName('');
      load();
    }
  };
  const replay = async (ids) => {
    const done = await attempt(setError, () => api(`${base}/dead-letters/replay`, { method: 'POST', body: ids ? { ids } : {} }));
    if (done) {
      setNotice(`${done.data.replayed} dead letters back in the queue.`);
      load();
    }
  };
  return (
    <section>
      <h1>Jobs</h1>
      <ErrorBox error={error} />
      <Notice text={notice} />
      <div class="toolbar">
        <button type="button" class="secondary" onClick={load}>
          Refresh
        </button>
      </div>
      {jobs && (
        <>
          <section aria-labelledby="queues">
            <h2 id="queues">Queues</h2>
            <form class="inline-form" onSubmit={createQueue} aria-label="Create queue">
              <label>
                Queue name
                <input name="queue-name" required value={queueName} onInput={(e) => setQueueName(e.currentTarget.value)} />
              </label>
              <button type="submit">Create queue</button>
            </form>
            {jobs.queues.length === 0 && <p>No queues.</p>}
            {jobs.queues.map((q) => (
              <Queue key={q.name} base={base} queue={q} onChange={load} setNotice={setNotice} />
            ))}
          </section>
          <section aria-labelledby="cron">
            <h2 id="cron">Cron jobs</h2>
            {jobs.cron.length === 0 ? (
              <p>No cron jobs (schedule one with cron.schedule in the SQL editor).</p>
            ) : (
              <div class="scroll">
                <table class="grid" aria-label="Cron jobs">
                  <thead>
                    <tr>
                      <th scope="col">Job</th>
                      <th scope="col">Schedule</th>
                      <th scope="col">Command</th>
                      <th scope="col">Active</th>
                      <th scope="col">Last runs</th>
                    </tr>
                  </thead>
                  <tbody>
                    {jobs.cron.map((j) => (
                      <tr key={j.jobid}>
                        <td>{j.jobname || j.jobid}</td>
                        <td>
                          <code>{j.schedule}</code>
                        </td>
                        <td>
                          <code>{j.command}</code>
                        </td>
                        <td>{j.active ? 'yes' : 'no'}</td>
                        <td>
                          {j.runs.length === 0
                            ? 'not yet'
                            : j.runs.map((r) => (
                                <div key={r.runid} class={r.status === 'failed' ? 'bad' : undefined}>
                                  {r.status} · {when(r.start_time)}
                                  {r.return_message ? ` · ${r.return_message}` : ''}
                                </div>
                              ))}
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </section>
          <section aria-labelledby="webhooks">
            <h2 id="webhooks">Webhooks</h2>
            <p>
              <span data-webhooks-queued>{jobs.webhooks.queued}</span> requests waiting to be delivered.
            </p>
            <h3>Dead letters</h3>
            {jobs.webhooks.dead.length === 0 ? (
              <p>No dead letters.</p>
            ) : (
              <>
                <div class="scroll">
                  <table class="grid" aria-label="Dead letters">
                    <thead>
                      <tr>
                        <th scope="col">Id</th>
                        <th scope="col">Request</th>
                        <th scope="col">Attempts</th>
                        <th scope="col">Last error</th>
                        <th scope="col">Failed</th>
                        <th scope="col">Actions</th>
                      </tr>
                    </thead>
                    <tbody>
                      {jobs.webhooks.dead.map((d) => (
                        <tr key={d.id}>
                          <td class="num">{d.id}</td>
                          <td>
                            {d.method} {d.url}
                          </td>
                          <td class="num">{d.attempts}</td>
                          <td>{d.last_error}</td>
                          <td>{when(d.failed_at)}</td>
                          <td class="actions">
                            <button type="button" class="secondary" aria-label={`Replay dead letter ${d.id}`} onClick={() => replay([d.id])}>
                              Replay
                            </button>
                          </td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                </div>
                <div class="toolbar">
                  <button type="button" onClick={() => replay(null)}>
                    Replay all dead letters
                  </button>
                </div>
              </>
            )}
            <h3>Recent deliveries</h3>
            {jobs.webhooks.responses.length === 0 ? (
              <p>No deliveries yet.</p>
            ) : (
              <ul>
                {jobs.webhooks.responses.map((r) => (
                  <li key={r.id}>
                    #{r.id} · {r.timed_out ? 'timed out' : r.status_code || r.error_msg} · {when(r.created)}
                  </li>
                ))}
              </ul>
            )}
          </section>
        </>
      )}
    </section>
  );
}

function Queue({ base, queue, onChange, setNotice }) {
  const path = `${base}/queues/${encodeURIComponent(queue.name)}`;
  const [message, setMessage] = useState('{"hello": "world"}');
  const [read, setRead] = useState(null);
  const [error, setError] = useState(null);
  const send = async (event) => {
    event.preventDefault();
    let parsed;
    try {
      parsed = JSON.parse(message);
    } catch (err) {
      setError(new Error(`Not valid JSON: ${err.message}`));
      return;
    }
    const done = await attempt(setError, () => api(`${path}/send`, { method: 'POST', body: { message: parsed } }));
    if (done) {
      setNotice(`Message ${done.data} sent to ${queue.name}.`);
      onChange();
    }
  };
  const readSome = async () => {
    const done = await attempt(setError, () => api(`${path}/read`, { method: 'POST', body: { vt: 30, qty: 10 } }));
    if (done) setRead(done.data);
  };
  return (
    <div class="card" role="region" aria-label={`Queue ${queue.name}`}>
      <h3>{queue.name}</h3>
      <p class="meta">
        <span data-queue-length>{queue.length}</span> waiting · {queue.total} sent in all · oldest{' '}
        {queue.oldest_age === null ? '—' : `${queue.oldest_age} s`}
      </p>
      <ErrorBox error={error} />
      <form class="inline-form" onSubmit={send} aria-label={`Send to ${queue.name}`}>
        <label>
          Message (JSON)
          <input name="message" value={message} onInput={(e) => setMessage(e.currentTarget.value)} />
        </label>
        <button type="submit">Send</button>
        <button type="button" class="secondary" onClick={readSome}>
          Read messages
        </button>
      </form>
      {read && read.length === 0 && <p>No message to read (or all hidden by a recent read).</p>}
      {read && read.length > 0 && (
        <ul class="messages">
          {read.map((m) => (
            <li key={m.msg_id}>
              #{m.msg_id} · read {m.read_ct}× · <code>{JSON.stringify(m.message)}</code>
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}
