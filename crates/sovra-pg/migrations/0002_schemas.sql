-- Schemas with Supabase's names; the services fill them in their own
-- migrations.
create schema if not exists extensions;
create schema if not exists auth;
create schema if not exists storage;
create schema if not exists realtime;
create schema if not exists sovra;

grant usage on schema public, extensions to anon, authenticated, service_role;
grant usage on schema auth, storage, realtime to anon, authenticated, service_role;
grant all on schema auth to supabase_auth_admin;
grant all on schema storage to supabase_storage_admin;
grant all on schema realtime to supabase_realtime_admin;

-- Tables made by user migrations are reachable by the API roles, and RLS
-- decides which rows; Supabase does the same, and apps rely on it.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;

-- Seeds hash passwords with crypt() and make ids with uuid_generate_v4().
create extension if not exists pgcrypto with schema extensions;
create extension if not exists "uuid-ossp" with schema extensions;

do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;

-- Readiness checks run on the request pool (as authenticator) and read
-- which migrations are applied; nothing else in `sovra` is theirs to see.
grant usage on schema sovra to authenticator;
grant select on sovra.schema_migrations to authenticator;
