// The tenant's realtime service, live: open connections and channels, and
// a tail of what arrives on a topic the admin subscribes to (broadcasts,
// presence, database changes). The socket goes through the dashboard,
// which hands it to the tenant's realtime service with the tenant's key:
// the page never holds a key.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, getCsrf } from '../api.js';
import { attempt, ErrorBox } from '../components.jsx';

const TAIL = 100;

export function Realtime({ tenant }) {
  const [stats, setStats] = useState(null);
  const [error, setError] = useState(null);
  const [form, setForm] = useState({ topic: 'room', table: '' });
  const [state, setState] = useState('closed'); // closed, connecting, joined, refused
  const [events, setEvents] = useState([]);
  const [outgoing, setOutgoing] = useState({ event: 'hello', payload: '{"from": "dashboard"}' });
  const socket = useRef(null);
  const ref = useRef(0);
  const topic = useRef('');

  const loadStats = () => attempt(setError, async () => setStats((await api(`/t/${tenant}/realtime`)).data));
  useEffect(() => {
    loadStats();
    const timer = setInterval(loadStats, 3000);
    return () => {
      clearInterval(timer);
      if (socket.current) socket.current.close();
    };
  }, [tenant]);

  const push = (event, payload) => {
    const ws = socket.current;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    ref.current += 1;
    ws.send(JSON.stringify({ topic: event === 'heartbeat' ? 'phoenix' : topic.current, event, payload, ref: String(ref.current), join_ref: '1' }));
  };
  const keep = (entry) => setEvents((list) => [entry, ...list].slice(0, TAIL));

  const subscribe = (event) => {
    event.preventDefault();
    if (socket.current) socket.current.close();
    setEvents([]);
    setState('connecting');
    topic.current = `realtime:${form.topic}`;
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(
      `${scheme}://${location.host}/_/api/t/${encodeURIComponent(tenant)}/realtime/websocket?vsn=1.0.0&csrf=${encodeURIComponent(getCsrf())}`,
    );
    socket.current = ws;
    let heartbeat;
    ws.onopen = () => {
      const [schema, table] = form.table.includes('.') ? form.table.split('.', 2) : ['public', form.table];
      const changes = form.table ? [{ event: '*', schema, table }] : [];
      ref.current += 1;
      ws.send(
        JSON.stringify({
          topic: topic.current,
          event: 'phx_join',
          payload: { config: { broadcast: { self: true }, presence: { key: '' }, postgres_changes: changes, private: false } },
          ref: String(ref.current),
          join_ref: '1',
        }),
      );
      heartbeat = setInterval(() => push('heartbeat', {}), 25000);
    };
    ws.onmessage = (message) => {
      let data;
      try {
        data = JSON.parse(message.data);
      } catch {
        return;
      }
      if (data.event === 'phx_reply' && data.payload && data.topic === topic.current) {
        if (data.payload.status === 'ok') setState((s) => (s === 'connecting' ? 'joined' : s));
        else {
          setState('refused');
          setError(new Error((data.payload.response && data.payload.response.reason) || 'The channel was refused'));
        }
        return;
      }
      if (data.topic !== topic.current) return;
      const at = new Date().toLocaleTimeString();
      if (data.event === 'broadcast') keep({ at, kind: 'broadcast', name: data.payload.event, body: data.payload.payload });
      else if (data.event === 'postgres_changes') {
        const change = data.payload.data || {};
        keep({ at, kind: 'change', name: `${change.type} ${change.schema}.${change.table}`, body: change.record || change.old_record });
      } else if (data.event === 'presence_state' || data.event === 'presence_diff') keep({ at, kind: 'presence', name: data.event, body: data.payload });
      else if (data.event === 'system') keep({ at, kind: 'system', name: data.payload.status || 'system', body: data.payload.message });
    };
    ws.onclose = () => {
      clearInterval(heartbeat);
      setState((s) => (s === 'refused' ? s : 'closed'));
    };
  };
  const unsubscribe = () => {
    if (socket.current) socket.current.close();
    socket.current = null;
  };
  const send = (event) => {
    event.preventDefault();
    let payload;
    try {
      payload = JSON.parse(outgoing.payload);
    } catch (err) {
      setError(new Error(`Not valid JSON: ${err.message}`));
      return;
    }
    setError(null);
    push('broadcast', { type: 'broadcast', event: outgoing.event, payload });
  };

  return (
    <section>
      <h1>Realtime</h1>
      <ErrorBox error={error} />
      {stats && (
        <p class="meta">
          <span data-connections>{stats.connections}</span> open connections · <span data-channels>{stats.channels}</span> channels
          {stats.peers ? ` · ${stats.peers} peer instances` : ''}
        </p>
      )}
      <form class="card inline-form" onSubmit={subscribe} aria-label="Subscribe">
        <label>
          Topic
          <input name="topic" required value={form.topic} onInput={(e) => setForm({ ...form, topic: e.currentTarget.value })} />
        </label>
        <label>
          Database changes of (schema.table, optional)
          <input name="changes-table" value={form.table} onInput={(e) => setForm({ ...form, table: e.currentTarget.value })} />
        </label>
        <button type="submit">Subscribe</button>
        <button type="button" class="secondary" disabled={state === 'closed'} onClick={unsubscribe}>
          Unsubscribe
        </button>
        <span role="status" data-socket-state={state}>
          {state === 'joined' ? `Listening on ${form.topic}` : state}
        </span>
      </form>
      {state === 'joined' && (
        <form class="inline-form" onSubmit={send} aria-label="Send a broadcast">
          <label>
            Event
            <input name="broadcast-event" required value={outgoing.event} onInput={(e) => setOutgoing({ ...outgoing, event: e.currentTarget.value })} />
          </label>
          <label>
            Payload (JSON)
            <input name="broadcast-payload" value={outgoing.payload} onInput={(e) => setOutgoing({ ...outgoing, payload: e.currentTarget.value })} />
          </label>
          <button type="submit">Send broadcast</button>
        </form>
      )}
      <ul class="tail" aria-label="Received">
        {events.map((e, i) => (
          <li key={events.length - i}>
            <span class="hint">{e.at}</span> <strong>{e.kind}</strong> {e.name} <code>{JSON.stringify(e.body)}</code>
          </li>
        ))}
      </ul>
      {state === 'joined' && events.length === 0 && <p>Nothing received yet.</p>}
    </section>
  );
}
