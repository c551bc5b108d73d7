-- The cron scheduler reads cron.job every second only while its database
-- has active jobs. Otherwise it listens on `sovra_cron` and waits: every
-- statement that changes cron.job (cron.schedule, unschedule, alter_job or
-- plain DML) notifies it at commit, so a new or re-activated job is read
-- at the next second boundary, and a database without jobs costs no
-- statement a second.
create or replace function sovra.cron_job_changed() returns trigger
language plpgsql
set search_path = pg_catalog
as $$
begin
  perform pg_catalog.pg_notify('sovra_cron', '');
  return null;
end
$$;

revoke all on function sovra.cron_job_changed() from public;

drop trigger if exists sovra_cron_job_changed on cron.job;
create trigger sovra_cron_job_changed
  after insert or update or delete or truncate on cron.job
  for each statement execute function sovra.cron_job_changed();
-- Also in sessions with session_replication_role = replica (logical
-- replication, some restores), where ordinary triggers do not fire.
alter table cron.job enable always trigger sovra_cron_job_changed;
