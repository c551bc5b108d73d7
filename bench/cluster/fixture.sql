-- bench/cluster.sh: a table of 10,000 rows anon may read (behind RLS).
create table public.items (
  id bigint primary key,
  name text not null,
  price numeric not null default 0
);
alter table public.items enable row level security;
create policy items_read on public.items for select to anon using (true);
grant select on public.items to anon;
insert into public.items select g, 'item ' || g, g from generate_series(1, 10000) g;
analyze;
