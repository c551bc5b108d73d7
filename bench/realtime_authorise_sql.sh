#!/usr/bin/env bash
# PostgreSQL's work for authorising one 20,000-row batch of inserts under
# RLS for 100 claims groups in 4 connections' worth of statements, run one
# after the other by psql: "before" are the statements main sent (each
# connection locks and puts back, range selects with hidden bounds),
# "after" those of the shared-snapshot change (one check, range selects
# planned with their bounds). Interleaved, 3 rounds per variant.
#
#   PGHOST=... PGPORT=... PGUSER=postgres bench/realtime_authorise_sql.sh [plain|index]...
#
# Needs an empty scratch database (it creates roles, schema auth, tables).
set -euo pipefail
dir="$(mktemp -d)"; trap 'rm -rf "$dir"' EXIT
P="psql -q -v ON_ERROR_STOP=1 -o /dev/null"
$P <<'SQL'
do $$ begin create role authenticated nologin; exception when duplicate_object then null; end $$;
create schema auth;
create function auth.uid() returns uuid language sql stable as $$
  select coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                  (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid $$;
grant usage on schema auth to authenticated;
create table public.bench_changes (id bigint generated always as identity primary key, owner_id uuid not null, body text not null);
alter table public.bench_changes enable row level security;
create policy own on public.bench_changes for select to authenticated using (owner_id = auth.uid());
grant select on public.bench_changes to authenticated;
create table public.bench_owners (n int primary key, id uuid not null);
insert into bench_owners select g, gen_random_uuid() from generate_series(0, 99) g;
insert into public.bench_changes (owner_id, body)
  select o.id, 'row' from generate_series(1, 200000) g join public.bench_owners o on o.n = g % 100;
vacuum analyze bench_changes;
create table v as select array_agg('111'::text) m, array_agg(id::text) c0, array_agg(owner_id::text) c1, array_agg(body) c2
  from (select * from bench_changes where id between 100001 and 120000 order by id) s;
SQL
psql -Atc "select id from bench_owners order by n" > "$dir/owners"
python3 - "$dir" <<'PY'
import sys
d = sys.argv[1]
owners = [l.strip() for l in open(f"{d}/owners")]
x = "x as materialized (select * from unnest((select m from v), (select c0 from v), (select c1 from v), (select c2 from v)){o} as x(m, c0, c1, c2{n}))"
differs = "(substr(x.m, 2, 1) = '1' and t.owner_id::text is distinct from x.c1) or (substr(x.m, 3, 1) = '1' and t.body::text is distinct from x.c2)"
lock = f"""with {x.format(o='', n='')},
 n as materialized (select distinct t.id from public.bench_changes t join x on t.id = x.c0::int8 where {differs}),
 l as (select 1 from public.bench_changes t where (t.id) in (select * from n) order by t.id for no key update of t skip locked)
 select (select count(*) from n), (select count(*) from l);
"""
restore = f"""with {x.format(o='', n='')},
 u as (update public.bench_changes t set owner_id = case when substr(x.m, 2, 1) = '1' then x.c1::uuid else t.owner_id end,
       body = case when substr(x.m, 3, 1) = '1' then x.c2::text else t.body end
       from x where t.id = x.c0::int8 and ({differs}) returning 1),
 i as (insert into public.bench_changes as t (id, owner_id, body) overriding system value
       select x.c0::int8, x.c1::uuid, x.c2::text from x
       where strpos(x.m, '0') = 0 and not exists (select 1 from public.bench_changes t where t.id = x.c0::int8)
       on conflict do nothing returning 1)
 select (select count(*) from u), (select count(*) from i);
"""
check = f"""with {x.format(o=' with ordinality', n=', n')}
 select count(x.n) from x left join public.bench_changes t on t.id = x.c0::int8
 where case when t.ctid is null then strpos(x.m, '0') = 0 else ({differs}) end;
"""
def group(u, planned):
    g = (f"select set_config('role', 'authenticated', true), set_config('request.jwt.claims', "
         f"'{{\"sub\":\"{u}\",\"role\":\"authenticated\"}}', true), set_config('request.jwt.claim.sub', '{u}', true);\n")
    bounds = "'100001'::text::int8 and '120000'::text::int8" if planned else "(select '100001'::text::int8) and (select '120000'::text::int8)"
    return g + f"select count(*) from (select t.id::text from public.bench_changes t where t.id between {bounds}) z;\nrollback to savepoint s;\n"
before = after = ""
after += "begin isolation level repeatable read;\n" + check + "rollback;\n"
for t in range(4):
    before += "begin isolation level repeatable read;\nset local session_replication_role = replica;\n" + lock + restore + "savepoint s;\n"
    before += "".join(group(u, False) for u in owners[t::4]) + "rollback;\n"
    after += "begin isolation level repeatable read;\nsavepoint s;\n"
    after += "".join(group(u, True) for u in owners[t::4]) + "rollback;\n"
open(f"{d}/before.sql", "w").write(before)
open(f"{d}/after.sql", "w").write(after)
PY
for variant in "${@:-plain index}"; do
  for v in $variant; do
    if [ "$v" = index ]; then $P -c "create index if not exists bench_owner on bench_changes (owner_id)"
    else $P -c "drop index if exists bench_owner"; fi
    for r in 1 2 3; do
      for b in before after; do
        s=$(date +%s%N); $P -f "$dir/$b.sql"; e=$(date +%s%N)
        echo "| $v | $b | round $r | $(( (e - s) / 1000000 )) ms | load $(cut -d' ' -f1 /proc/loadavg) |"
      done
    done
  done
done
