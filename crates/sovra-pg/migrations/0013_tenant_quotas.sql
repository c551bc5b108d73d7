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
