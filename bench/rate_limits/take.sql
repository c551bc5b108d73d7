\set k random(1, :buckets)
-- One take from one of `buckets` shared buckets (pgbench -D buckets=N; with
-- 1, every client on the same key, which the row lock orders), as
-- crates/sovra-auth/src/shared_limits.rs sends it.
insert into sovra.rate_limits as b (bucket, key, tokens, at, allowed, full_at)
     values ('verify', sha256(int4send(:k)), 1e9::float8 - 1, now(), true,
             now() + make_interval(secs => 1 / 1e6::float8))
     on conflict (bucket, key) do update set (tokens, allowed, at, full_at) = (
       select t.left, t.ok, t.now,
              t.now + make_interval(secs => greatest(1e9::float8 - t.left, 0) / 1e6::float8)
         from (select s.r >= 1 - 1e-9 as ok,
                      case when s.r >= 1 - 1e-9 then greatest(s.r - 1, 0) else s.r end as left,
                      s.now
                 from (select least(1e9::float8,
                                    b.tokens + greatest(extract(epoch from now() - b.at)::float8, 0)
                                               * 1e6::float8) as r,
                              greatest(b.at, now()) as now) s) t)
     returning allowed, tokens;
