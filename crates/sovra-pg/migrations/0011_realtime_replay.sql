-- Realtime: broadcast replay and binary broadcasts from the database.
--
-- realtime.send_binary() is Supabase's: it stores a raw-bytes broadcast in
-- realtime.messages (binary_payload), which reaches subscribers through the
-- change feed as realtime.send()'s rows do, and stays there for replay.
-- The index serves replay (`config.broadcast.replay`): the latest messages
-- of one topic since a moment.

create or replace function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
  returns void language plpgsql security definer set search_path = '' as $$
begin
  insert into realtime.messages (binary_payload, event, topic, private, extension)
  values (payload, event, topic, private, 'broadcast');
exception when others then
  raise warning 'realtime.send_binary failed: %', sqlerrm;
end
$$;
alter function realtime.send_binary(bytea, text, text, boolean) owner to supabase_realtime_admin;
grant execute on function realtime.send_binary(bytea, text, text, boolean) to anon, authenticated, service_role;

create index if not exists messages_topic_inserted_at_index on realtime.messages (topic, inserted_at desc);
