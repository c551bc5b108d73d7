-- Cron (#18): pg_cron's SQL API in schema `cron` (tables `cron.job` and
-- `cron.job_run_details` with pg_cron's columns, `cron.schedule`,
-- `cron.schedule_in_database`, `cron.unschedule`, `cron.alter_job`). Sovra's
-- scheduler (crates/sovra-server/src/cron.rs) runs the jobs.
--
-- As in pg_cron, each role sees and changes only its own jobs (row-level
-- security on `username`); the superuser may schedule for another role.
-- Using cron at all takes `grant usage on schema cron to <role>`.

create schema if not exists cron;
revoke all on schema cron from public;

-- The schedule grammar of crates/sovra-cron, in SQL (a differential test in
-- crates/sovra-server/tests/jobs.rs keeps the two equal).
create or replace function cron._value(v text, names text[]) returns int
language plpgsql immutable set search_path = '' as $$
declare
  i int;
begin
  if names is not null then
    i := array_position(names, v);
    if i is not null then
      return case when cardinality(names) = 12 then i else i - 1 end;
    end if;
  end if;
  if v !~ '^[0-9]{1,4}$' then
    return null;
  end if;
  return v::int;
end;
$$;

create or replace function cron._field_ok(f text, low int, high int, names text[], dollar boolean)
returns boolean language plpgsql immutable set search_path = '' as $$
declare
  item text;
  r text;
  st text;
  a int;
  b int;
  p int;
begin
  foreach item in array string_to_array(f, ',') loop
    if dollar and item = '$' then
      continue;
    end if;
    p := position('/' in item);
    if p > 0 then
      r := left(item, p - 1);
      st := substr(item, p + 1);
      if st !~ '^[0-9]{1,4}$' or st::int = 0 then
        return false;
      end if;
    else
      r := item;
      st := null;
    end if;
    if r = '*' then
      a := low;
      b := high;
    elsif position('-' in r) > 0 then
      a := cron._value(left(r, position('-' in r) - 1), names);
      b := cron._value(substr(r, position('-' in r) + 1), names);
    else
      if st is not null then
        return false;
      end if;
      a := cron._value(r, names);
      b := a;
    end if;
    if a is null or b is null or a < low or b > high or a > b then
      return false;
    end if;
  end loop;
  return true;
end;
$$;

create or replace function cron._schedule_ok(schedule text) returns boolean
language plpgsql immutable set search_path = '' as $$
declare
  s text;
  n text;
  fields text[];
begin
  if schedule is null or schedule !~ '^[\t -~]*$' then
    return false;
  end if;
  s := lower(btrim(schedule, E' \t'));
  if s ~ '^[0-9]+[ \t]*seconds?$' then
    n := substring(s from '^([0-9]+)');
    return length(n) <= 4 and n::int between 1 and 59;
  end if;
  if s in ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly') then
    return true;
  end if;
  if left(s, 1) = '@' then
    return false;
  end if;
  fields := regexp_split_to_array(s, '[ \t]+');
  if cardinality(fields) <> 5 then
    return false;
  end if;
  return cron._field_ok(fields[1], 0, 59, null, false)
     and cron._field_ok(fields[2], 0, 23, null, false)
     and cron._field_ok(fields[3], 1, 31, null, true)
     and cron._field_ok(fields[4], 1, 12,
           array['jan','feb','mar','apr','may','jun','jul','aug','sep','oct','nov','dec'], false)
     and cron._field_ok(fields[5], 0, 7, array['sun','mon','tue','wed','thu','fri','sat'], false);
end;
$$;

create or replace function cron._check_schedule(schedule text) returns void
language plpgsql immutable set search_path = '' as $$
begin
  if not cron._schedule_ok(schedule) then
    raise exception 'invalid schedule: %', schedule using errcode = '22023';
  end if;
end;
$$;

create table if not exists cron.job (
  jobid bigserial primary key,
  schedule text not null check (cron._schedule_ok(schedule)),
  command text not null,
  nodename text not null default 'localhost',
  nodeport int not null default coalesce(inet_server_port(), 5432),
  database text not null default current_database(),
  username text not null default current_user,
  active boolean not null default true,
  jobname text
);
create unique index if not exists jobname_username_uniq on cron.job (jobname, username);

create table if not exists cron.job_run_details (
  jobid bigint,
  runid bigserial primary key,
  job_pid integer,
  database text,
  username text,
  command text,
  status text,
  return_message text,
  start_time timestamptz,
  end_time timestamptz
);
create index if not exists job_run_details_start_time on cron.job_run_details (start_time);
create index if not exists job_run_details_jobid on cron.job_run_details (jobid, start_time);

alter table cron.job enable row level security;
alter table cron.job_run_details enable row level security;
drop policy if exists cron_job_policy on cron.job;
create policy cron_job_policy on cron.job using (username = current_user);
drop policy if exists cron_job_run_details_policy on cron.job_run_details;
create policy cron_job_run_details_policy on cron.job_run_details using (username = current_user);
grant select, insert, update, delete on cron.job to public;
grant select, delete on cron.job_run_details to public;
grant usage on sequence cron.job_jobid_seq to public;

-- The scheduler's bookkeeping: the last tick each job ran for (seconds
-- since the epoch), claimed by compare-and-set so that one tick runs once
-- however many Sovra instances watch the database.
create table if not exists sovra.cron_job_state (
  jobid bigint primary key references cron.job (jobid) on delete cascade,
  last_tick bigint not null
);
revoke all on sovra.cron_job_state from public;

create or replace function cron.schedule(job_name text, schedule text, command text)
returns bigint language plpgsql set search_path = '' as $$
declare
  id bigint;
begin
  perform cron._check_schedule(schedule);
  if job_name is null then
    insert into cron.job (schedule, command) values (schedule, command) returning jobid into id;
    return id;
  end if;
  insert into cron.job (schedule, command, jobname)
  values (schedule, command, job_name)
  on conflict (jobname, username)
  do update set schedule = excluded.schedule, command = excluded.command
  returning jobid into id;
  return id;
end;
$$;

create or replace function cron.schedule(schedule text, command text)
returns bigint language sql set search_path = '' as $$
  select cron.schedule(null::text, schedule, command)
$$;

create or replace function cron.schedule_in_database(
  job_name text,
  schedule text,
  command text,
  database text,
  username text default null,
  active boolean default true
) returns bigint language plpgsql set search_path = '' as $$
#variable_conflict use_column
declare
  id bigint;
begin
  perform cron._check_schedule(schedule_in_database.schedule);
  if schedule_in_database.database is distinct from current_database() then
    raise exception 'Sovra runs a job in the database that schedules it: schedule it in "%"',
      schedule_in_database.database using errcode = '0A000';
  end if;
  insert into cron.job (schedule, command, jobname, database, username, active)
  values (schedule_in_database.schedule, schedule_in_database.command, job_name,
          schedule_in_database.database, coalesce(schedule_in_database.username, current_user),
          coalesce(schedule_in_database.active, true))
  on conflict (jobname, username)
  do update set schedule = excluded.schedule, command = excluded.command,
                database = excluded.database, active = excluded.active
  returning jobid into id;
  return id;
end;
$$;

create or replace function cron.unschedule(job_id bigint)
returns boolean language plpgsql set search_path = '' as $$
begin
  delete from cron.job where jobid = job_id;
  if not found then
    raise exception 'could not find valid entry for job %', job_id;
  end if;
  return true;
end;
$$;

create or replace function cron.unschedule(job_name text)
returns boolean language plpgsql set search_path = '' as $$
begin
  delete from cron.job where jobname = job_name and username = current_user;
  if not found then
    raise exception 'could not find valid entry for job ''%''', job_name;
  end if;
  return true;
end;
$$;

create or replace function cron.alter_job(
  job_id bigint,
  schedule text default null,
  command text default null,
  database text default null,
  username text default null,
  active boolean default null
) returns void language plpgsql set search_path = '' as $$
begin
  if schedule is not null then
    perform cron._check_schedule(schedule);
  end if;
  if database is not null and database <> current_database() then
    raise exception 'Sovra runs a job in the database that schedules it: schedule it in "%"', database
      using errcode = '0A000';
  end if;
  update cron.job j set
    schedule = coalesce(alter_job.schedule, j.schedule),
    command = coalesce(alter_job.command, j.command),
    username = coalesce(alter_job.username, j.username),
    active = coalesce(alter_job.active, j.active)
  where j.jobid = job_id;
  if not found then
    raise exception 'Job % does not exist or you don''t own it', job_id;
  end if;
end;
$$;

-- Runs a job's command as its owner, for owners that are not superusers:
-- inside a SECURITY DEFINER function owned by that role (made on first use),
-- where PostgreSQL refuses SET ROLE, RESET ROLE and SET SESSION
-- AUTHORIZATION, so the command cannot leave its owner's rights. Answers
-- the rows the command's last statement processed. Only the scheduler
-- calls it. (Such a function keeps its role from being dropped until it is
-- dropped: `drop owned by <role>` does.)
-- It keeps the session's search_path (the database's default), which the
-- job's command sees.
create or replace function sovra.cron_run(owner text, command text) returns bigint
language plpgsql as $$
declare
  role_oid oid;
  fname text;
  n bigint;
begin
  select oid into role_oid from pg_catalog.pg_roles where rolname = owner;
  if role_oid is null then
    raise exception 'role "%" does not exist', owner using errcode = '42704';
  end if;
  fname := 'cron_run_as_' || role_oid;
  if to_regprocedure(format('sovra.%I(text)', fname)) is null then
    begin
      execute format(
      'create function sovra.%I(command text) returns bigint
       language plpgsql security definer as $run$
       declare n bigint;
       begin
         execute command;
         get diagnostics n = row_count;
         return n;
       end;
       $run$', fname);
      execute format('revoke all on function sovra.%I(text) from public', fname);
      execute format('alter function sovra.%I(text) owner to %I', fname, owner);
    exception when unique_violation or duplicate_function then
      -- Made by a run of another of this role's jobs at the same moment.
      null;
    end;
  end if;
  execute format('select sovra.%I($1)', fname) into n using command;
  return n;
end;
$$;
revoke all on function sovra.cron_run(text, text) from public;
