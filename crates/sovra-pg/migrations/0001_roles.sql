-- The roles that user SQL and RLS policies refer to by name, as on Supabase.
-- Roles are cluster-wide, so another database of the same cluster may have
-- created them already (or be creating them right now): each CREATE ROLE
-- tolerates that.
do $$
declare
  spec text[];
begin
  foreach spec slice 1 in array array[
    array['anon', 'nologin noinherit'],
    array['authenticated', 'nologin noinherit'],
    array['service_role', 'nologin noinherit bypassrls'],
    array['authenticator', 'login noinherit'],
    array['supabase_auth_admin', 'nologin noinherit'],
    array['supabase_storage_admin', 'nologin noinherit'],
    array['supabase_realtime_admin', 'nologin noinherit']
  ] loop
    if not exists (select 1 from pg_roles where rolname = spec[1]) then
      begin
        execute format('create role %I %s', spec[1], spec[2]);
      exception when duplicate_object or unique_violation then
        null;
      end;
    end if;
  end loop;
end
$$;

-- service_role must bypass RLS even when the role pre-existed without it.
alter role service_role bypassrls;

grant anon, authenticated, service_role to authenticator;

alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
