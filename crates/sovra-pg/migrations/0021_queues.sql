-- Queues (#18): pgmq's SQL API (schema `pgmq`, the 1.4 layout that
-- Supabase ships: `pgmq.meta`, a table `pgmq.q_<name>` of live messages and
-- `pgmq.a_<name>` of archived ones per queue) and Supabase's `pgmq_public`
-- wrappers that `/rest/v1/rpc` serves when the schema is exposed.
--
-- When the server has the real pgmq extension, it is installed instead of
-- Sovra's functions; the wrappers call it the same way.
--
-- Privileges follow Supabase: the functions run as their caller (SECURITY
-- INVOKER), so what a caller may do with a queue is what PostgreSQL lets
-- its role do with that queue's tables. `service_role` gets every queue
-- table (granted when the queue is made); `anon` and `authenticated` get
-- none until the project grants them (docs/jobs.md), so they are refused.
do $outer$
begin
  if exists (select 1 from pg_namespace where nspname = 'pgmq') then
    -- Installed already (a restored Supabase dump or the extension).
    null;
  elsif exists (select 1 from pg_available_extensions where name = 'pgmq') then
    create extension if not exists pgmq;
  else
    execute $pgmq$
create schema pgmq;

create table pgmq.meta (
  queue_name varchar unique not null,
  is_partitioned boolean not null,
  is_unlogged boolean not null,
  created_at timestamptz default now() not null
);

create type pgmq.message_record as (
  msg_id bigint,
  read_ct integer,
  enqueued_at timestamptz,
  vt timestamptz,
  message jsonb
);

create type pgmq.queue_record as (
  queue_name varchar,
  is_partitioned boolean,
  is_unlogged boolean,
  created_at timestamptz
);

create type pgmq.metrics_result as (
  queue_name text,
  queue_length bigint,
  newest_msg_age_sec int,
  oldest_msg_age_sec int,
  total_messages bigint,
  scrape_time timestamptz
);

-- The table of a queue: `<prefix>_<name>` in lower case. Names reach SQL
-- only through format('%I'); the characters pgmq refuses are refused too,
-- and so are empty names.
create function pgmq.format_table_name(queue_name text, prefix text)
returns text language plpgsql immutable as $fn$
begin
  if queue_name is null or queue_name = '' then
    raise exception 'queue name must not be empty';
  end if;
  if queue_name ~ '\$|;|--|''' then
    raise exception 'queue name contains invalid characters: $, ;, --, or \''';
  end if;
  return lower(prefix || '_' || queue_name);
end;
$fn$;

create function pgmq.validate_queue_name(queue_name text)
returns void language plpgsql as $fn$
begin
  if length(queue_name) >= 48 then
    raise exception 'queue name is too long, maximum length is 48 characters';
  end if;
end;
$fn$;

-- Makes a queue's two tables (logged or not), its indexes and its row in
-- pgmq.meta, and gives service_role the tables as Supabase does.
create function pgmq._create(queue_name text, unlogged boolean)
returns void language plpgsql as $fn$
declare
  qtable text := pgmq.format_table_name(queue_name, 'q');
  atable text := pgmq.format_table_name(queue_name, 'a');
begin
  perform pgmq.validate_queue_name(queue_name);
  execute format(
    'create %s table if not exists pgmq.%I (
       msg_id bigint primary key generated always as identity,
       read_ct int default 0 not null,
       enqueued_at timestamptz default now() not null,
       vt timestamptz not null,
       message jsonb
     )',
    case when unlogged then 'unlogged' else '' end, qtable);
  execute format(
    'create table if not exists pgmq.%I (
       msg_id bigint primary key,
       read_ct int default 0 not null,
       enqueued_at timestamptz default now() not null,
       archived_at timestamptz default now() not null,
       vt timestamptz not null,
       message jsonb
     )', atable);
  execute format('create index if not exists %I on pgmq.%I (vt asc)', qtable || '_vt_idx', qtable);
  execute format('create index if not exists %I on pgmq.%I (archived_at)',
                 'archived_at_idx_' || lower(queue_name), atable);
  if exists (select 1 from pg_roles where rolname = 'service_role') then
    execute format('grant select, insert, update, delete, truncate on pgmq.%I, pgmq.%I to service_role',
                   qtable, atable);
    execute format('grant usage, select on sequence pgmq.%I to service_role', qtable || '_msg_id_seq');
  end if;
  insert into pgmq.meta (queue_name, is_partitioned, is_unlogged)
  values (queue_name, false, unlogged)
  on conflict do nothing;
end;
$fn$;

create function pgmq.create_non_partitioned(queue_name text)
returns void language sql as $fn$ select pgmq._create(queue_name, false) $fn$;

create function pgmq."create"(queue_name text)
returns void language sql as $fn$ select pgmq._create(queue_name, false) $fn$;

create function pgmq.create_unlogged(queue_name text)
returns void language sql as $fn$ select pgmq._create(queue_name, true) $fn$;

create function pgmq.create_partitioned(
  queue_name text,
  partition_interval text default '10000',
  retention_interval text default '100000'
) returns void language plpgsql as $fn$
begin
  raise exception 'pg_partman is required for partitioned queues';
end;
$fn$;

create function pgmq.drop_queue(queue_name text, partitioned boolean default false)
returns boolean language plpgsql as $fn$
begin
  execute format('drop table if exists pgmq.%I', pgmq.format_table_name(queue_name, 'q'));
  execute format('drop table if exists pgmq.%I', pgmq.format_table_name(queue_name, 'a'));
  delete from pgmq.meta m where m.queue_name = drop_queue.queue_name;
  return true;
end;
$fn$;

-- Without the extension there is nothing to detach the archive from.
create function pgmq.detach_archive(queue_name text)
returns void language plpgsql as $fn$
begin
  perform pgmq.format_table_name(queue_name, 'a');
end;
$fn$;

create function pgmq.send(queue_name text, msg jsonb, delay integer default 0)
returns setof bigint language plpgsql as $fn$
begin
  return query execute format(
    'insert into pgmq.%I (vt, message) values (clock_timestamp() + $2, $1) returning msg_id',
    pgmq.format_table_name(queue_name, 'q'))
  using msg, make_interval(secs => delay);
end;
$fn$;

create function pgmq.send_batch(queue_name text, msgs jsonb[], delay integer default 0)
returns setof bigint language plpgsql as $fn$
begin
  return query execute format(
    'insert into pgmq.%I (vt, message)
     select clock_timestamp() + $2, m from unnest($1) with ordinality as u(m, n) order by n
     returning msg_id',
    pgmq.format_table_name(queue_name, 'q'))
  using msgs, make_interval(secs => delay);
end;
$fn$;

-- The oldest visible messages, up to qty, made invisible for vt seconds;
-- rows another reader holds are skipped, never handed out twice.
create function pgmq.read(queue_name text, vt integer, qty integer, conditional jsonb default '{}')
returns setof pgmq.message_record language plpgsql as $fn$
declare
  qtable text := pgmq.format_table_name(queue_name, 'q');
begin
  return query execute format(
    'with cte as (
       select msg_id from pgmq.%I
       where vt <= clock_timestamp() and ($3 = ''{}''::jsonb or message @> $3)
       order by msg_id asc
       limit $1
       for update skip locked
     )
     update pgmq.%I m
     set vt = clock_timestamp() + $2, read_ct = read_ct + 1
     from cte
     where m.msg_id = cte.msg_id
     returning m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message',
    qtable, qtable)
  using qty, make_interval(secs => vt), coalesce(conditional, '{}'::jsonb);
end;
$fn$;

create function pgmq.read_with_poll(
  queue_name text,
  vt integer,
  qty integer,
  max_poll_seconds integer default 5,
  poll_interval_ms integer default 100,
  conditional jsonb default '{}'
) returns setof pgmq.message_record language plpgsql as $fn$
declare
  stop_at timestamptz := clock_timestamp() + make_interval(secs => max_poll_seconds);
  r pgmq.message_record;
  got boolean;
begin
  loop
    got := false;
    for r in select * from pgmq.read(queue_name, vt, qty, conditional) loop
      got := true;
      return next r;
    end loop;
    if got or clock_timestamp() >= stop_at then
      return;
    end if;
    perform pg_sleep(greatest(poll_interval_ms, 1)::numeric / 1000);
  end loop;
end;
$fn$;

create function pgmq.pop(queue_name text)
returns setof pgmq.message_record language plpgsql as $fn$
declare
  qtable text := pgmq.format_table_name(queue_name, 'q');
begin
  return query execute format(
    'with cte as (
       select msg_id from pgmq.%I
       where vt <= clock_timestamp()
       order by msg_id asc
       limit 1
       for update skip locked
     )
     delete from pgmq.%I m using cte where m.msg_id = cte.msg_id
     returning m.msg_id, m.read_ct, m.enqueued_at, m.vt, m.message',
    qtable, qtable);
end;
$fn$;

create function pgmq.archive(queue_name text, msg_id bigint)
returns boolean language plpgsql as $fn$
declare
  moved bigint;
begin
  execute format(
    'with archived as (
       delete from pgmq.%I where msg_id = $1
       returning msg_id, vt, read_ct, enqueued_at, message
     )
     insert into pgmq.%I (msg_id, vt, read_ct, enqueued_at, message)
     select msg_id, vt, read_ct, enqueued_at, message from archived
     returning msg_id',
    pgmq.format_table_name(queue_name, 'q'), pgmq.format_table_name(queue_name, 'a'))
  into moved using msg_id;
  return moved is not null;
end;
$fn$;

create function pgmq.archive(queue_name text, msg_ids bigint[])
returns setof bigint language plpgsql as $fn$
begin
  return query execute format(
    'with archived as (
       delete from pgmq.%I where msg_id = any($1)
       returning msg_id, vt, read_ct, enqueued_at, message
     )
     insert into pgmq.%I (msg_id, vt, read_ct, enqueued_at, message)
     select msg_id, vt, read_ct, enqueued_at, message from archived
     returning msg_id',
    pgmq.format_table_name(queue_name, 'q'), pgmq.format_table_name(queue_name, 'a'))
  using msg_ids;
end;
$fn$;

create function pgmq.delete(queue_name text, msg_id bigint)
returns boolean language plpgsql as $fn$
declare
  gone bigint;
begin
  execute format('delete from pgmq.%I where msg_id = $1 returning msg_id',
                 pgmq.format_table_name(queue_name, 'q'))
  into gone using msg_id;
  return gone is not null;
end;
$fn$;

create function pgmq.delete(queue_name text, msg_ids bigint[])
returns setof bigint language plpgsql as $fn$
begin
  return query execute format('delete from pgmq.%I where msg_id = any($1) returning msg_id',
                              pgmq.format_table_name(queue_name, 'q'))
  using msg_ids;
end;
$fn$;

create function pgmq.set_vt(queue_name text, msg_id bigint, vt integer)
returns setof pgmq.message_record language plpgsql as $fn$
begin
  return query execute format(
    'update pgmq.%I set vt = clock_timestamp() + $2 where msg_id = $1
     returning msg_id, read_ct, enqueued_at, vt, message',
    pgmq.format_table_name(queue_name, 'q'))
  using msg_id, make_interval(secs => vt);
end;
$fn$;

create function pgmq.purge_queue(queue_name text)
returns bigint language plpgsql as $fn$
declare
  qtable text := pgmq.format_table_name(queue_name, 'q');
  n bigint;
begin
  execute format('select count(*) from pgmq.%I', qtable) into n;
  execute format('truncate table pgmq.%I', qtable);
  return n;
end;
$fn$;

create function pgmq.metrics(queue_name text)
returns pgmq.metrics_result language plpgsql as $fn$
declare
  qtable text := pgmq.format_table_name(queue_name, 'q');
  result pgmq.metrics_result;
begin
  execute format(
    'select $1::text,
            count(*),
            extract(epoch from (now() - max(enqueued_at)))::int,
            extract(epoch from (now() - min(enqueued_at)))::int,
            (select case when is_called then last_value else 0 end from pgmq.%I),
            now()
     from pgmq.%I',
    qtable || '_msg_id_seq', qtable)
  into result using queue_name;
  return result;
end;
$fn$;

create function pgmq.metrics_all()
returns setof pgmq.metrics_result language plpgsql as $fn$
declare
  q record;
begin
  for q in select m.queue_name from pgmq.meta m order by m.queue_name loop
    return next pgmq.metrics(q.queue_name);
  end loop;
end;
$fn$;

create function pgmq.list_queues()
returns setof pgmq.queue_record language sql as $fn$
  select queue_name, is_partitioned, is_unlogged, created_at from pgmq.meta
$fn$;

grant usage on schema pgmq to pg_monitor;
grant select on all tables in schema pgmq to pg_monitor;
alter default privileges in schema pgmq grant select on tables to pg_monitor;
alter default privileges in schema pgmq grant select on sequences to pg_monitor;
$pgmq$;
  end if;
end
$outer$;

-- The roles of the API reach the schema; what they may do in it is
-- decided per queue table.
grant usage on schema pgmq to anon, authenticated, service_role;
grant select on pgmq.meta to service_role;

-- Supabase's wrappers ("Expose Queues via PostgREST"), with its argument
-- names, as their caller.
create schema if not exists pgmq_public;
grant usage on schema pgmq_public to anon, authenticated, service_role;

create or replace function pgmq_public.send(queue_name text, message jsonb, sleep_seconds integer default 0)
returns setof bigint language plpgsql set search_path = '' as $$
begin
  return query select * from pgmq.send(queue_name := queue_name, msg := message, delay := sleep_seconds);
end;
$$;
comment on function pgmq_public.send(text, jsonb, integer) is
  'Sends a message to the specified queue, optionally delaying its availability by a number of seconds.';

create or replace function pgmq_public.send_batch(queue_name text, messages jsonb[], sleep_seconds integer default 0)
returns setof bigint language plpgsql set search_path = '' as $$
begin
  return query select * from pgmq.send_batch(queue_name := queue_name, msgs := messages, delay := sleep_seconds);
end;
$$;
comment on function pgmq_public.send_batch(text, jsonb[], integer) is
  'Sends a batch of messages to the specified queue, optionally delaying their availability by a number of seconds.';

create or replace function pgmq_public.read(queue_name text, sleep_seconds integer, n integer)
returns setof pgmq.message_record language plpgsql set search_path = '' as $$
begin
  return query select * from pgmq.read(queue_name := queue_name, vt := sleep_seconds, qty := n);
end;
$$;
comment on function pgmq_public.read(text, integer, integer) is
  'Reads up to "n" messages from the specified queue, hiding them from other readers for "sleep_seconds".';

create or replace function pgmq_public.pop(queue_name text)
returns setof pgmq.message_record language plpgsql set search_path = '' as $$
begin
  return query select * from pgmq.pop(queue_name := queue_name);
end;
$$;
comment on function pgmq_public.pop(text) is
  'Retrieves and deletes the next message from the specified queue.';

create or replace function pgmq_public.archive(queue_name text, message_id bigint)
returns boolean language plpgsql set search_path = '' as $$
begin
  return pgmq.archive(queue_name := queue_name, msg_id := message_id);
end;
$$;
comment on function pgmq_public.archive(text, bigint) is
  'Moves a message from the specified queue to its archive.';

create or replace function pgmq_public.delete(queue_name text, message_id bigint)
returns boolean language plpgsql set search_path = '' as $$
begin
  return pgmq.delete(queue_name := queue_name, msg_id := message_id);
end;
$$;
comment on function pgmq_public.delete(text, bigint) is
  'Permanently deletes a message from the specified queue.';

grant execute on all functions in schema pgmq_public to anon, authenticated, service_role;
