-- HTTP from SQL (#18): pg_net's API (schema `net`), Supabase's database
-- webhooks (`supabase_functions.http_request`) and Sovra's transactional
-- outbox (`sovra.outbox_send`). Requests are rows written in the caller's
-- transaction; Sovra's delivery worker (crates/sovra-net) sends them after
-- commit, retries with back-off, and moves those that keep failing to a
-- dead-letter table.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'supabase_functions_admin') then
    begin
      create role supabase_functions_admin nologin noinherit;
    exception when duplicate_object or unique_violation then
      null;
    end;
  end if;
end
$$;

create schema if not exists net;
revoke all on schema net from public;
grant usage on schema net to service_role, supabase_functions_admin;

-- The durable queue. pg_net's columns first (id, method, url, headers,
-- body, timeout_milliseconds); the rest is Sovra's retry state.
create table if not exists net.http_request_queue (
  id bigserial primary key,
  method text not null check (method in ('GET', 'POST', 'DELETE')),
  url text not null,
  headers jsonb not null default '{}',
  body bytea,
  timeout_milliseconds integer not null check (timeout_milliseconds > 0),
  attempts integer not null default 0,
  -- When the row may be claimed next: now for a new request, later for a
  -- retry, and the end of the lease while a worker delivers it (a worker
  -- that dies leaves the row to be claimed again once the lease ends).
  next_attempt_at timestamptz not null default now(),
  last_error text,
  created timestamptz not null default now()
);
create index if not exists http_request_queue_due on net.http_request_queue (next_attempt_at);

-- One row per finished request (as pg_net), the outcome of its last attempt.
create table if not exists net._http_response (
  id bigint primary key,
  status_code integer,
  content_type text,
  headers jsonb,
  content text,
  timed_out boolean,
  error_msg text,
  created timestamptz not null default now()
);
create index if not exists _http_response_created on net._http_response (created);

-- Requests that failed `net.max_attempts` times with a retryable error.
create table if not exists net.http_request_dead (
  id bigint primary key,
  method text not null,
  url text not null,
  headers jsonb not null,
  body bytea,
  timeout_milliseconds integer not null,
  attempts integer not null,
  last_error text,
  created timestamptz not null,
  failed_at timestamptz not null default now()
);

alter table net.http_request_queue owner to supabase_functions_admin;
alter table net._http_response owner to supabase_functions_admin;
alter table net.http_request_dead owner to supabase_functions_admin;
alter sequence net.http_request_queue_id_seq owner to supabase_functions_admin;
revoke all on net.http_request_queue, net._http_response, net.http_request_dead from public;
grant select on net._http_response, net.http_request_dead to service_role;

-- Wakes the delivery worker once per transaction that queued requests
-- (NOTIFY is delivered at commit, and never for a rolled-back one).
create or replace function net._wake() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  perform pg_notify('sovra_net', '');
  return null;
end
$$;
alter function net._wake() owner to supabase_functions_admin;
revoke all on function net._wake() from public;
drop trigger if exists wake on net.http_request_queue;
create trigger wake after insert on net.http_request_queue
  for each statement execute function net._wake();

create or replace function net._urlencode_string(string varchar) returns text
language sql immutable strict set search_path = '' as $$
  select string_agg(
    case when ch ~ '[A-Za-z0-9_.~-]' then ch
         else (select string_agg('%' || upper(lpad(to_hex(b), 2, '0')), '')
               from (select get_byte(convert_to(ch, 'utf8'), i) as b
                     from generate_series(0, octet_length(convert_to(ch, 'utf8')) - 1) i) bytes)
    end, '' order by n)
  from regexp_split_to_table(string, '') with ordinality as t(ch, n)
$$;

-- `url` with `params` (a JSON object of strings) URL-encoded and appended.
create or replace function net._with_params(url text, params jsonb) returns text
language plpgsql immutable set search_path = '' as $$
declare
  query text;
begin
  if url is null then
    raise exception 'url must not be null';
  end if;
  if params is not null and jsonb_typeof(params) <> 'object' then
    raise exception 'params must be a JSON object';
  end if;
  select string_agg(net._urlencode_string(key) || '=' || net._urlencode_string(value), '&' order by key)
    into query
    from jsonb_each_text(coalesce(params, '{}'));
  if query is null or query = '' then
    return url;
  end if;
  return url || case when strpos(url, '?') > 0 then '&' else '?' end || query;
end
$$;

create or replace function net._enqueue(method text, url text, headers jsonb, body bytea, timeout_milliseconds integer)
returns bigint language plpgsql security definer set search_path = '' as $$
declare
  request_id bigint;
begin
  if headers is not null and jsonb_typeof(headers) <> 'object' then
    raise exception 'headers must be a JSON object';
  end if;
  if url !~* '^https?://' then
    raise exception 'url must start with http:// or https://';
  end if;
  insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
    values (method, url, coalesce(headers, '{}'), body, coalesce(timeout_milliseconds, 5000))
    returning id into request_id;
  return request_id;
end
$$;
alter function net._enqueue(text, text, jsonb, bytea, integer) owner to supabase_functions_admin;
revoke all on function net._enqueue(text, text, jsonb, bytea, integer) from public;

create or replace function net.http_get(
  url text,
  params jsonb default '{}'::jsonb,
  headers jsonb default '{}'::jsonb,
  timeout_milliseconds int default 5000
) returns bigint language plpgsql volatile security definer set search_path = '' as $$
begin
  return net._enqueue('GET', net._with_params(url, params), headers, null, timeout_milliseconds);
end
$$;

create or replace function net.http_post(
  url text,
  body jsonb default '{}'::jsonb,
  params jsonb default '{}'::jsonb,
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  timeout_milliseconds int default 5000
) returns bigint language plpgsql volatile security definer set search_path = '' as $$
declare
  content_type text;
begin
  select value into content_type
    from jsonb_each_text(coalesce(headers, '{}')) where lower(key) = 'content-type' limit 1;
  if content_type is null then
    headers := coalesce(headers, '{}') || '{"Content-Type": "application/json"}'::jsonb;
  elsif content_type <> 'application/json' then
    raise exception 'Content-Type header must be "application/json"';
  end if;
  return net._enqueue('POST', net._with_params(url, params), headers,
    case when body is null then null else convert_to(body::text, 'utf8') end, timeout_milliseconds);
end
$$;

create or replace function net.http_delete(
  url text,
  params jsonb default '{}'::jsonb,
  headers jsonb default '{}'::jsonb,
  timeout_milliseconds int default 5000,
  body jsonb default null
) returns bigint language plpgsql volatile security definer set search_path = '' as $$
begin
  return net._enqueue('DELETE', net._with_params(url, params), headers,
    case when body is null then null else convert_to(body::text, 'utf8') end, timeout_milliseconds);
end
$$;

-- Puts dead letters back in the queue (all of them, or those of `ids`),
-- with their attempts counted from zero; answers how many.
create or replace function net.replay_dead_letters(ids bigint[] default null)
returns bigint language plpgsql volatile security definer set search_path = '' as $$
declare
  moved bigint;
begin
  with gone as (
    delete from net.http_request_dead d where ids is null or d.id = any(ids) returning d.*
  ), cleared as (
    delete from net._http_response r using gone where r.id = gone.id
  )
  insert into net.http_request_queue (id, method, url, headers, body, timeout_milliseconds, created)
    select id, method, url, headers, body, timeout_milliseconds, created from gone;
  get diagnostics moved = row_count;
  return moved;
end
$$;

do $$
declare
  fn text;
begin
  foreach fn in array array[
    'net._urlencode_string(varchar)',
    'net._with_params(text, jsonb)',
    'net.http_get(text, jsonb, jsonb, integer)',
    'net.http_post(text, jsonb, jsonb, jsonb, integer)',
    'net.http_delete(text, jsonb, jsonb, integer, jsonb)',
    'net.replay_dead_letters(bigint[])'
  ] loop
    execute format('alter function %s owner to supabase_functions_admin', fn);
    execute format('revoke all on function %s from public', fn);
  end loop;
end
$$;
-- Supabase grants these to anon and authenticated too; Sovra does not
-- (any caller who can run SQL would make the server send requests): the
-- service role may, and so may SECURITY DEFINER functions of the app's
-- owner and the database webhooks below.
grant execute on function net.http_get(text, jsonb, jsonb, integer) to service_role;
grant execute on function net.http_post(text, jsonb, jsonb, jsonb, integer) to service_role;
grant execute on function net.http_delete(text, jsonb, jsonb, integer, jsonb) to service_role;
grant execute on function net._urlencode_string(varchar), net._with_params(text, jsonb) to service_role;

-- Database webhooks, as Supabase defines them.
create schema if not exists supabase_functions;
grant usage on schema supabase_functions to anon, authenticated, service_role, supabase_functions_admin;

create table if not exists supabase_functions.hooks (
  id bigserial primary key,
  hook_table_id integer not null,
  hook_name text not null,
  created_at timestamptz not null default now(),
  request_id bigint
);
create index if not exists supabase_functions_hooks_request_id_idx on supabase_functions.hooks (request_id);
create index if not exists supabase_functions_hooks_h_table_id_h_name_idx on supabase_functions.hooks (hook_table_id, hook_name);
comment on table supabase_functions.hooks is 'Supabase Functions Hooks: Audit trail for triggered hooks.';
alter table supabase_functions.hooks owner to supabase_functions_admin;
alter sequence supabase_functions.hooks_id_seq owner to supabase_functions_admin;
revoke all on supabase_functions.hooks from public;
grant select on supabase_functions.hooks to service_role;

-- `create trigger … execute function supabase_functions.http_request(url,
-- method, headers, params, timeout_ms)`: sends
-- {"type","table","schema","record","old_record"} after commit.
create or replace function supabase_functions.http_request() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  request_id bigint;
  payload jsonb;
  url text := TG_ARGV[0]::text;
  method text := TG_ARGV[1]::text;
  headers jsonb default '{}'::jsonb;
  params jsonb default '{}'::jsonb;
  timeout_ms integer default 1000;
begin
  if url is null or url = 'null' then
    raise exception 'url argument is missing';
  end if;
  if method is null or method = 'null' then
    raise exception 'method argument is missing';
  end if;
  if TG_ARGV[2] is null or TG_ARGV[2] = 'null' then
    headers := '{"Content-Type": "application/json"}'::jsonb;
  else
    headers := TG_ARGV[2]::jsonb;
  end if;
  if TG_ARGV[3] is not null and TG_ARGV[3] <> 'null' then
    params := TG_ARGV[3]::jsonb;
  end if;
  if TG_ARGV[4] is not null and TG_ARGV[4] <> 'null' then
    timeout_ms := TG_ARGV[4]::integer;
  end if;
  case upper(method)
    when 'GET' then
      request_id := net.http_get(url, params, headers, timeout_ms);
    when 'POST' then
      payload := jsonb_build_object(
        'old_record', case when TG_OP in ('UPDATE', 'DELETE') then to_jsonb(OLD) end,
        'record', case when TG_OP in ('INSERT', 'UPDATE') then to_jsonb(NEW) end,
        'type', TG_OP,
        'table', TG_TABLE_NAME,
        'schema', TG_TABLE_SCHEMA
      );
      request_id := net.http_post(url, payload, params, headers, timeout_ms);
    else
      raise exception 'method argument % is invalid', method;
  end case;
  insert into supabase_functions.hooks (hook_table_id, hook_name, request_id)
    values (TG_RELID, TG_NAME, request_id);
  return NEW;
end
$$;
alter function supabase_functions.http_request() owner to supabase_functions_admin;
revoke all on function supabase_functions.http_request() from public;
grant execute on function supabase_functions.http_request() to anon, authenticated, service_role;
grant execute on function net.http_get(text, jsonb, jsonb, integer),
  net.http_post(text, jsonb, jsonb, jsonb, integer) to supabase_functions_admin;

-- The transactional outbox: events written in the app's transaction and
-- published after commit to every destination of their topic, in commit
-- order per topic (sends to one topic serialise on a transaction lock, so
-- ids follow commit order within a topic).
create table if not exists sovra.outbox (
  id bigserial primary key,
  topic text not null check (topic <> ''),
  payload jsonb not null,
  created_at timestamptz not null default now()
);
create table if not exists sovra.outbox_destinations (
  id bigserial primary key,
  -- The outbox topic this destination receives, or '*' for every topic.
  topic text not null check (topic <> ''),
  kind text not null check (kind in ('realtime', 'nats', 'http')),
  -- realtime: the broadcast topic; nats: the subject; http: the URL.
  target text not null check (target <> ''),
  -- realtime: whether the broadcast is private (RLS on realtime.messages).
  private boolean not null default false,
  -- http: extra request headers.
  headers jsonb not null default '{}' check (jsonb_typeof(headers) = 'object')
);
create index if not exists outbox_destinations_topic on sovra.outbox_destinations (topic);
revoke all on sovra.outbox, sovra.outbox_destinations from public;

create or replace function sovra._outbox_wake() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  perform pg_notify('sovra_outbox', '');
  return null;
end
$$;
drop trigger if exists wake on sovra.outbox;
create trigger wake after insert on sovra.outbox
  for each statement execute function sovra._outbox_wake();

create or replace function sovra.outbox_send(topic text, payload jsonb)
returns bigint language plpgsql volatile security definer set search_path = '' as $$
declare
  event_id bigint;
begin
  if topic is null or topic = '' then
    raise exception 'topic must not be empty';
  end if;
  perform pg_advisory_xact_lock(hashtextextended('sovra.outbox:' || topic, 0));
  insert into sovra.outbox (topic, payload) values (topic, coalesce(payload, 'null'::jsonb))
    returning id into event_id;
  return event_id;
end
$$;
revoke all on function sovra.outbox_send(text, jsonb) from public;
-- The service role may; an app lets others through functions of its own.
grant execute on function sovra.outbox_send(text, jsonb) to service_role;
