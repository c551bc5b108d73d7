-- Quotas of tenants (#14): the bytes of stored objects, read by the
-- request pool's role (`authenticator`) without reading any row itself.
-- The sum runs over storage.objects as its owner; it answers one number
-- and nothing about the objects.
create or replace function sovra.storage_bytes() returns bigint
language sql stable security definer set search_path = '' as $$
  select coalesce(sum((o.metadata->>'size')::bigint), 0)::bigint from storage.objects o
$$;
revoke all on function sovra.storage_bytes() from public;
grant execute on function sovra.storage_bytes() to authenticator;

-- A tenant may live in a database of its own URL (`database_url` on
-- create) instead of a clone of the template: where it is. Readable by
-- the administrative user only, as the rest of the registry.
alter table sovra.tenants add column if not exists database_url text;
