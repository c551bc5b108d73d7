-- Tenants' secrets sealed at rest (#17). The registry's secret values
-- (signing keys, API keys, database_url, provider and hook secrets,
-- smtp_url, login passwords) are sealed by the server under the tenant
-- secrets key (`server.tenant_secrets_key`, else
-- `<data_dir>/tenant-secrets.key`); the columns keep their types (a
-- sealed JSON value is a JSON string).
--
-- The key check: a known value sealed under the current key, so that a
-- server started with another key refuses to start instead of reading
-- or writing the registry with it. One row.
create table if not exists sovra.tenant_secrets_check (
  id boolean primary key default true check (id),
  sealed text not null,
  updated_at timestamptz not null default now()
);
revoke all on sovra.tenant_secrets_check from public;

-- Login passwords are sealed now: PostgreSQL cannot read them, the server
-- sets them (from bound values in a temporary table, never in statement
-- text).
drop function if exists sovra.apply_tenant_login(name);
