-- The tenant registry (#14). It lives in the platform's own database (the
-- default tenant's); every tenant database is a clone of a migrated
-- template, so it carries an empty copy that nothing reads.
--
-- A tenant's signing keys and its login roles' passwords are here too:
-- like sovra.login_secrets, readable by the administrative user only.
create table if not exists sovra.tenants (
  name text primary key
    check (name ~ '^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$'),
  database name not null unique,
  state text not null default 'active'
    check (state in ('active', 'suspended')),
  settings jsonb not null default '{}'::jsonb,
  keys jsonb not null,
  api_keys jsonb not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
revoke all on sovra.tenants from public;

create table if not exists sovra.tenant_logins (
  role name primary key,
  tenant text not null references sovra.tenants (name) on delete cascade,
  password text not null
);
revoke all on sovra.tenant_logins from public;

-- Sets a tenant login role's password from the table: the password never
-- appears in any statement text (a server logging statements logs none).
create or replace function sovra.apply_tenant_login(login name) returns void
language plpgsql set search_path = '' as $$
declare
  secret text;
begin
  select l.password into strict secret from sovra.tenant_logins l where l.role = login;
  execute format('alter role %I with login password %L', login, secret);
end
$$;
revoke all on function sovra.apply_tenant_login(name) from public;
