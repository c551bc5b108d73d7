-- Realtime: the messages table that authorises private channels (through
-- its RLS policies) and carries broadcasts sent from the database, with
-- Supabase's helpers realtime.topic(), realtime.send() and
-- realtime.broadcast_changes().

create table if not exists realtime.messages (
  id uuid not null default gen_random_uuid(),
  topic text not null,
  extension text not null,
  payload jsonb,
  binary_payload bytea,
  event text,
  private boolean default false,
  updated_at timestamp not null default now(),
  inserted_at timestamp not null default now(),
  primary key (id, inserted_at)
);
create index if not exists messages_inserted_at_topic_index on realtime.messages (inserted_at desc, topic);
alter table realtime.messages enable row level security;
alter table realtime.messages owner to supabase_realtime_admin;
grant usage on schema realtime to anon, authenticated, service_role;
grant select, insert, update on realtime.messages to anon, authenticated, service_role;
grant usage on schema realtime to authenticator;

create or replace function realtime.topic() returns text
  language sql stable as $$ select nullif(current_setting('realtime.topic', true), '')::text $$;
grant execute on function realtime.topic() to anon, authenticated, service_role;

-- Broadcast from the database: the row reaches the subscribers of `topic`
-- through the change feed (publication sovra_realtime_messages).
create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
  returns void language plpgsql security definer set search_path = '' as $$
begin
  insert into realtime.messages (payload, event, topic, private, extension)
  values (payload, event, topic, private, 'broadcast');
exception when others then
  raise warning 'realtime.send failed: %', sqlerrm;
end
$$;
alter function realtime.send(jsonb, text, text, boolean) owner to supabase_realtime_admin;
grant execute on function realtime.send(jsonb, text, text, boolean) to anon, authenticated, service_role;

-- Trigger helper: broadcasts a row change as Supabase's does.
create or replace function realtime.broadcast_changes(
  topic_name text, event_name text, operation text, table_name text, table_schema text,
  new record, old record, level text default 'ROW')
  returns void language plpgsql security definer set search_path = '' as $$
declare
  row_data jsonb;
begin
  if level = 'STATEMENT' then
    raise exception 'function can only be triggered for each row, not for each statement';
  end if;
  row_data := jsonb_build_object(
    'old_record', case when operation in ('UPDATE', 'DELETE') then to_jsonb(old) end,
    'record', case when operation in ('INSERT', 'UPDATE') then to_jsonb(new) end,
    'operation', operation, 'table', table_name, 'schema', table_schema);
  perform realtime.send(row_data, event_name, topic_name);
end
$$;
alter function realtime.broadcast_changes(text, text, text, text, text, record, record, text) owner to supabase_realtime_admin;
grant execute on function realtime.broadcast_changes(text, text, text, text, text, record, record, text)
  to anon, authenticated, service_role;

do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'sovra_realtime_messages') then
    create publication sovra_realtime_messages for table realtime.messages with (publish = 'insert');
  end if;
end
$$;
