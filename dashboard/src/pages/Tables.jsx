import { useEffect, useRef, useState } from 'preact/hooks';
import { api } from '../api.js';
import { attempt, display, ErrorBox, Notice } from '../components.jsx';
import { Link } from '../router.jsx';
import { Policies } from './Policies.jsx';

const PAGE = 25;
const OPERATORS = [
  ['eq', '='],
  ['neq', '≠'],
  ['gt', '>'],
  ['gte', '≥'],
  ['lt', '<'],
  ['lte', '≤'],
  ['like', 'like'],
  ['ilike', 'ilike'],
  ['is', 'is'],
];

export function Tables({ tenant, rest }) {
  const parts = rest.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts.length >= 2) return <TableView tenant={tenant} schema={parts[0]} name={parts[1]} key={rest} />;
  return <TableList tenant={tenant} />;
}

function TableList({ tenant }) {
  const [tables, setTables] = useState(null);
  const [schema, setSchema] = useState('public');
  const [error, setError] = useState(null);
  useEffect(() => {
    attempt(setError, async () => setTables((await api(`/t/${tenant}/tables`)).data));
  }, [tenant]);
  const schemas = tables ? [...new Set(tables.map((t) => t.schema))] : [];
  const shown = tables ? tables.filter((t) => t.schema === schema) : [];
  return (
    <section>
      <h1>Tables</h1>
      <ErrorBox error={error} />
      {tables && (
        <>
          <label class="inline">
            Schema{' '}
            <select value={schema} onChange={(e) => setSchema(e.currentTarget.value)}>
              {schemas.map((s) => (
                <option key={s}>{s}</option>
              ))}
            </select>
          </label>
          <div class="scroll">
            <table class="grid" aria-label={`Tables in ${schema}`}>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Kind</th>
                  <th scope="col">Rows</th>
                  <th scope="col">RLS</th>
                </tr>
              </thead>
              <tbody>
                {shown.map((t) => (
                  <tr key={t.name}>
                    <td>
                      <Link href={`/t/${tenant}/tables/${encodeURIComponent(t.schema)}/${encodeURIComponent(t.name)}`}>
                        {t.name}
                      </Link>
                    </td>
                    <td>{t.kind}</td>
                    <td class="num" data-rows={t.name}>
                      {t.rows === null ? '—' : `${t.estimated ? '~' : ''}${t.rows}`}
                    </td>
                    <td>{t.kind === 'table' ? (t.rls ? 'on' : 'off') : ''}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          {shown.length === 0 && <p>No tables or views in this schema.</p>}
        </>
      )}
    </section>
  );
}

function quoteValue(value) {
  return value;
}

function TableView({ tenant, schema, name }) {
  const [meta, setMeta] = useState(null);
  const [metaVersion, setMetaVersion] = useState(0);
  const [rows, setRows] = useState([]);
  const [total, setTotal] = useState(null);
  const [offset, setOffset] = useState(0);
  const [order, setOrder] = useState(null);
  const [filters, setFilters] = useState([]);
  const [draft, setDraft] = useState({ column: '', op: 'eq', value: '' });
  const [editing, setEditing] = useState(null); // null, 'new' or a row
  const [error, setError] = useState(null);
  const [notice, setNotice] = useState('');
  const base = `/t/${tenant}/rest/v1/${encodeURIComponent(name)}`;
  const profile = { 'accept-profile': schema };

  useEffect(() => {
    attempt(setError, async () => {
      const { data } = await api(`/t/${tenant}/tables/${encodeURIComponent(schema)}/${encodeURIComponent(name)}`);
      setMeta(data);
      setDraft((d) => ({ ...d, column: d.column || (data.columns[0] ? data.columns[0].name : '') }));
    });
  }, [tenant, schema, name, metaVersion]);

  // Only the latest load's answer is shown (an earlier one may come later).
  const latest = useRef(0);
  const load = () =>
    attempt(setError, async () => {
      const seq = ++latest.current;
      const query = new URLSearchParams();
      query.set('select', '*');
      for (const f of filters) query.append(f.column, `${f.op}.${quoteValue(f.value)}`);
      if (order) query.set('order', `${order.column}.${order.dir}`);
      query.set('limit', String(PAGE));
      query.set('offset', String(offset));
      const { data, headers } = await api(`${base}?${query}`, {
        headers: { ...profile, prefer: 'count=exact' },
      });
      if (seq !== latest.current) return;
      setRows(data);
      const range = headers.get('content-range') || '';
      const count = range.split('/')[1];
      setTotal(count && count !== '*' ? Number(count) : null);
    });

  useEffect(() => {
    if (meta) load();
  }, [meta, offset, order, filters]);

  if (!meta) return <ErrorBox error={error} />;
  const key = meta.primary_key;
  const writable = meta.kind === 'table';
  const where = (row) => key.map((k) => `${encodeURIComponent(k)}=eq.${encodeURIComponent(row[k])}`).join('&');

  const sortBy = (column) => {
    setOffset(0);
    setOrder(order && order.column === column && order.dir === 'asc' ? { column, dir: 'desc' } : { column, dir: 'asc' });
  };
  const addFilter = (event) => {
    event.preventDefault();
    if (!draft.column) return;
    setOffset(0);
    setFilters([...filters, draft]);
    setDraft({ ...draft, value: '' });
  };
  const remove = async (row) => {
    if (!confirm(`Delete this row of ${name}?`)) return;
    const done = await attempt(setError, () =>
      api(`${base}?${where(row)}`, { method: 'DELETE', headers: { 'content-profile': schema } }),
    );
    if (done) {
      setNotice('Row deleted.');
      load();
    }
  };
  const save = async (values) => {
    const isNew = editing === 'new';
    const done = await attempt(setError, () =>
      api(isNew ? base : `${base}?${where(editing)}`, {
        method: isNew ? 'POST' : 'PATCH',
        body: values,
        headers: { 'content-profile': schema, prefer: 'return=minimal' },
      }),
    );
    if (done) {
      setEditing(null);
      setNotice(isNew ? 'Row inserted.' : 'Row saved.');
      load();
    }
  };

  return (
    <section>
      <p class="crumbs">
        <Link href={`/t/${tenant}/tables`}>Tables</Link> / {schema}
      </p>
      <h1>{name}</h1>
      <p class="meta">
        {meta.kind}
        {writable && <> · RLS {meta.rls ? 'on' : 'off'}</>}
        {total !== null && <> · <span data-total>{total}</span> rows</>}
        {key.length > 0 && <> · key {key.join(', ')}</>}
      </p>
      <ErrorBox error={error} />
      <Notice text={notice} />
      <form class="filters" onSubmit={addFilter} aria-label="Filter rows">
        <label>
          Column
          <select value={draft.column} onChange={(e) => setDraft({ ...draft, column: e.currentTarget.value })}>
            {meta.columns.map((c) => (
              <option key={c.name}>{c.name}</option>
            ))}
          </select>
        </label>
        <label>
          Operator
          <select value={draft.op} onChange={(e) => setDraft({ ...draft, op: e.currentTarget.value })}>
            {OPERATORS.map(([op, label]) => (
              <option value={op} key={op}>
                {label}
              </option>
            ))}
          </select>
        </label>
        <label>
          Value
          <input name="filter-value" value={draft.value} onInput={(e) => setDraft({ ...draft, value: e.currentTarget.value })} />
        </label>
        <button type="submit">Add filter</button>
      </form>
      {filters.length > 0 && (
        <ul class="chips" aria-label="Active filters">
          {filters.map((f, i) => (
            <li key={i}>
              {f.column} {f.op} {f.value}{' '}
              <button
                type="button"
                class="link"
                aria-label={`Remove filter on ${f.column}`}
                onClick={() => {
                  setOffset(0);
                  setFilters(filters.filter((_, j) => j !== i));
                }}
              >
                ×
              </button>
            </li>
          ))}
        </ul>
      )}
      <div class="toolbar">
        {writable && (
          <button type="button" onClick={() => setEditing('new')}>
            Insert row
          </button>
        )}
        <button type="button" class="secondary" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>
          Previous
        </button>
        <span>
          {rows.length ? `${offset + 1}–${offset + rows.length}` : '0'}
          {total !== null ? ` of ${total}` : ''}
        </span>
        <button
          type="button"
          class="secondary"
          disabled={total !== null ? offset + PAGE >= total : rows.length < PAGE}
          onClick={() => setOffset(offset + PAGE)}
        >
          Next
        </button>
      </div>
      {editing && (
        <RowForm
          columns={meta.columns}
          row={editing === 'new' ? null : editing}
          onSave={save}
          onCancel={() => setEditing(null)}
        />
      )}
      <div class="scroll">
        <table class="grid" aria-label={`Rows of ${name}`}>
          <thead>
            <tr>
              {meta.columns.map((c) => (
                <th scope="col" key={c.name}>
                  <button type="button" class="link" onClick={() => sortBy(c.name)}>
                    {c.name}
                    {order && order.column === c.name ? (order.dir === 'asc' ? ' ▲' : ' ▼') : ''}
                  </button>
                  <span class="type">{c.type}</span>
                </th>
              ))}
              {writable && key.length > 0 && <th scope="col">Actions</th>}
            </tr>
          </thead>
          <tbody>
            {rows.map((row, i) => (
              <tr key={i}>
                {meta.columns.map((c) => (
                  <td key={c.name}>{display(row[c.name])}</td>
                ))}
                {writable && key.length > 0 && (
                  <td class="actions">
                    <button type="button" class="secondary" onClick={() => setEditing(row)}>
                      Edit
                    </button>
                    <button type="button" class="danger" onClick={() => remove(row)}>
                      Delete
                    </button>
                  </td>
                )}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {writable && (
        <Policies tenant={tenant} schema={schema} name={name} meta={meta} onChange={() => setMetaVersion((v) => v + 1)} />
      )}
    </section>
  );
}

const NUMERIC = ['int2', 'int4', 'int8', 'float4', 'float8', 'numeric', 'oid'];

function inputKind(column) {
  if (column.array) return 'json';
  if (column.enum) return 'enum';
  if (column.base === 'bool') return 'bool';
  if (NUMERIC.includes(column.base)) return 'number';
  if (column.base === 'json' || column.base === 'jsonb') return 'json';
  if (column.base === 'date') return 'date';
  return 'text';
}

function initial(column, row) {
  if (!row) return { value: '', isNull: false };
  const value = row[column.name];
  if (value === null || value === undefined) return { value: '', isNull: true };
  const kind = inputKind(column);
  return { value: kind === 'json' ? JSON.stringify(value, null, 2) : String(value), isNull: false };
}

// Insert or edit one row, with an input fitting each column's type.
function RowForm({ columns, row, onSave, onCancel }) {
  const editable = columns.filter((c) => !c.generated);
  const [values, setValues] = useState(() => Object.fromEntries(editable.map((c) => [c.name, initial(c, row)])));
  const [error, setError] = useState(null);
  const set = (name, patch) => setValues({ ...values, [name]: { ...values[name], ...patch } });
  const submit = (event) => {
    event.preventDefault();
    setError(null);
    const body = {};
    try {
      for (const c of editable) {
        const { value, isNull } = values[c.name];
        if (isNull) {
          body[c.name] = null;
          continue;
        }
        if (value === '' && (!row || c.identity)) continue; // the default applies
        const kind = inputKind(c);
        if (kind === 'number') body[c.name] = value === '' ? null : Number(value);
        else if (kind === 'bool') body[c.name] = value === 'true';
        else if (kind === 'json') body[c.name] = JSON.parse(value);
        else body[c.name] = value;
      }
    } catch (err) {
      setError(new Error(`Not valid JSON: ${err.message}`));
      return;
    }
    onSave(body);
  };
  return (
    <form class="card rowform" onSubmit={submit} aria-label={row ? 'Edit row' : 'Insert row'}>
      <h2>{row ? 'Edit row' : 'Insert row'}</h2>
      {editable.map((c) => {
        const kind = inputKind(c);
        const v = values[c.name];
        const id = `col-${c.name}`;
        return (
          <div class="field" key={c.name}>
            <label for={id}>
              {c.name} <span class="type">{c.type}</span>
              {c.default && <span class="hint"> default {c.default}</span>}
            </label>
            {kind === 'bool' ? (
              <select id={id} value={v.value} disabled={v.isNull} onChange={(e) => set(c.name, { value: e.currentTarget.value })}>
                <option value="">(default)</option>
                <option value="true">true</option>
                <option value="false">false</option>
              </select>
            ) : kind === 'enum' ? (
              <select id={id} value={v.value} disabled={v.isNull} onChange={(e) => set(c.name, { value: e.currentTarget.value })}>
                <option value="">(default)</option>
                {c.enum.map((label) => (
                  <option key={label}>{label}</option>
                ))}
              </select>
            ) : kind === 'json' ? (
              <textarea id={id} rows={3} value={v.value} disabled={v.isNull} onInput={(e) => set(c.name, { value: e.currentTarget.value })} />
            ) : (
              <input
                id={id}
                type={kind === 'number' ? 'number' : kind === 'date' ? 'date' : 'text'}
                step={kind === 'number' ? 'any' : undefined}
                value={v.value}
                disabled={v.isNull}
                onInput={(e) => set(c.name, { value: e.currentTarget.value })}
              />
            )}
            {c.nullable && (
              <label class="inline">
                <input type="checkbox" checked={v.isNull} onChange={(e) => set(c.name, { isNull: e.currentTarget.checked })} /> NULL
              </label>
            )}
          </div>
        );
      })}
      <ErrorBox error={error} />
      <div class="toolbar">
        <button type="submit">{row ? 'Save' : 'Insert'}</button>
        <button type="button" class="secondary" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}
