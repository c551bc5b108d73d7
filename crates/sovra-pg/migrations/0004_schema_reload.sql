-- Schema changes reload the REST schema cache, as PostgREST's documented
-- event trigger does: every DDL command ends with NOTIFY pgrst.
create or replace function sovra.notify_schema_change() returns event_trigger
language plpgsql
as $$
begin
  perform pg_notify('pgrst', 'reload schema');
end
$$;

do $$
begin
  if not exists (select 1 from pg_event_trigger where evtname = 'sovra_schema_change') then
    create event trigger sovra_schema_change on ddl_command_end
      execute function sovra.notify_schema_change();
  end if;
exception when insufficient_privilege then
  raise warning 'sovra: cannot create the DDL event trigger (needs superuser); run NOTIFY pgrst, ''reload schema'' after schema changes';
end
$$;
