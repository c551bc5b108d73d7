-- Idempotency-Key (#18): the first response of a `/rest/v1` write or `/rpc`
-- call sent with an `Idempotency-Key` header, kept per caller for
-- `rest.idempotency_retention` seconds and replayed for a repeat
-- (crates/sovra-rest/src/idempotency.rs, docs/rest.md).
--
-- A request's claim, its write and its stored response are one
-- transaction: the claim is inserted first (a concurrent duplicate waits
-- on the primary key until the first commits, then replays, or rolls back,
-- then runs), the response is stored last, before COMMIT. A request that
-- fails rolls back and leaves nothing, so a retry runs again.
--
-- The table belongs to the migrating user and is reachable by no API role;
-- the request pool's login role `authenticator` calls the three functions
-- below (security definer, fixed search_path, every value bound), and only
-- while the session is not switched to a caller's role.

create table if not exists sovra.idempotency_keys (
  -- The caller: its role and `sub`, or the API key's id (set by Sovra).
  scope text not null,
  key text not null,
  -- SHA-256 of the method, path, query, Content-Profile and body.
  fingerprint bytea not null,
  -- The transaction that claimed the key: only it stores the response.
  xact xid8 not null,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  -- The response; null until stored (never visible committed).
  status smallint,
  headers jsonb,
  body bytea,
  primary key (scope, key)
);
create index if not exists idempotency_keys_expires_at on sovra.idempotency_keys (expires_at);
revoke all on sovra.idempotency_keys from public;
revoke all on sovra.idempotency_keys from anon, authenticated, service_role, authenticator;

-- Claims `p_key` for the caller `p_scope` in the current transaction, or
-- raises: SQLSTATE `SVID1` when a live response is stored for it with the
-- same fingerprint (replay it), `SVID2` when with another one (422). An
-- expired claim is taken over. A few expired rows are deleted on the way.
create or replace function sovra.idempotency_claim(
  p_scope text, p_key text, p_fingerprint bytea, p_retention_secs int)
returns void
language plpgsql security definer set search_path = '' as $$
declare
  stored bytea;
begin
  delete from sovra.idempotency_keys
  where ctid = any (array(
    select ctid from sovra.idempotency_keys
    where expires_at < now() - interval '1 minute'
    limit 8 for update skip locked));
  for attempt in 1..3 loop
    insert into sovra.idempotency_keys as k (scope, key, fingerprint, xact, expires_at)
    values (p_scope, p_key, p_fingerprint, pg_catalog.pg_current_xact_id(),
            now() + pg_catalog.make_interval(secs => p_retention_secs))
    on conflict (scope, key) do update
      set fingerprint = excluded.fingerprint, xact = excluded.xact,
          created_at = excluded.created_at, expires_at = excluded.expires_at,
          status = null, headers = null, body = null
      where k.expires_at <= now();
    if found then
      return;
    end if;
    -- A live row, committed (the insert waited for its transaction).
    select k.fingerprint into stored from sovra.idempotency_keys k
    where k.scope = p_scope and k.key = p_key;
    if found then
      if stored = p_fingerprint then
        raise exception using errcode = 'SVID1',
          message = 'this Idempotency-Key was used before: its response is replayed';
      end if;
      raise exception using errcode = 'SVID2',
        message = 'this Idempotency-Key was used with another request';
    end if;
    -- Deleted meanwhile: claim again.
  end loop;
  raise exception using errcode = '40001', message = 'could not claim the Idempotency-Key';
end
$$;

-- Stores the response of the claim made in the current transaction.
create or replace function sovra.idempotency_complete(
  p_scope text, p_key text, p_status int, p_headers jsonb, p_body bytea)
returns void
language plpgsql security definer set search_path = '' as $$
begin
  update sovra.idempotency_keys
  set status = p_status, headers = p_headers, body = p_body
  where scope = p_scope and key = p_key
    and xact = pg_catalog.pg_current_xact_id() and status is null;
  if not found then
    raise exception using errcode = 'SVID3',
      message = 'no Idempotency-Key was claimed in this transaction';
  end if;
end
$$;

-- The stored response of a live claim.
create or replace function sovra.idempotency_replay(p_scope text, p_key text)
returns table (status int, headers text, body bytea)
language sql stable security definer set search_path = '' as $$
  select k.status, k.headers::text, k.body from sovra.idempotency_keys k
  where k.scope = p_scope and k.key = p_key and k.expires_at > now() and k.status is not null
$$;

revoke all on function sovra.idempotency_claim(text, text, bytea, int) from public;
revoke all on function sovra.idempotency_complete(text, text, int, jsonb, bytea) from public;
revoke all on function sovra.idempotency_replay(text, text) from public;
grant execute on function sovra.idempotency_claim(text, text, bytea, int) to authenticator;
grant execute on function sovra.idempotency_complete(text, text, int, jsonb, bytea) to authenticator;
grant execute on function sovra.idempotency_replay(text, text) to authenticator;
