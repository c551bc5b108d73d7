-- The cluster test's tables (tests/cluster/cluster.test.js), loaded once
-- node 1 has migrated the database.

-- Steady writes under failure: every row is public to read (so that every
-- subscriber may see every change) and written by the service role.
create table public.cluster_events (
  id bigint primary key,
  writer text not null,
  at timestamptz not null default now()
);
alter table public.cluster_events enable row level security;
create policy cluster_events_read on public.cluster_events for select to anon, authenticated using (true);
grant select on public.cluster_events to anon, authenticated;
grant all on public.cluster_events to service_role;
alter publication supabase_realtime add table public.cluster_events;

-- Notes each user sees only their own of, for changes crossing nodes.
create table public.cluster_notes (
  id bigint generated always as identity primary key,
  owner_id uuid not null default auth.uid(),
  body text not null
);
alter table public.cluster_notes enable row level security;
create policy cluster_notes_own on public.cluster_notes to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());
grant select, insert on public.cluster_notes to authenticated;
alter publication supabase_realtime add table public.cluster_notes;

-- A bucket signed-in users upload to and read from.
insert into storage.buckets (id, name, public) values ('cluster', 'cluster', false);
create policy cluster_buckets_read on storage.buckets for select to authenticated using (true);
create policy cluster_objects_rw on storage.objects for all to authenticated
  using (bucket_id = 'cluster') with check (bucket_id = 'cluster');

-- What the cron job does every 2 seconds (one row per run).
create table public.cluster_ticks (
  id bigint generated always as identity primary key,
  at timestamptz not null default clock_timestamp()
);
