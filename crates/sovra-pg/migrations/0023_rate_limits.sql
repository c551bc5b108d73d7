-- Rate limits shared by every node on this database (issue #21), used when
-- `server.shared_state` is `postgres` (or `auto` with NATS configured): one
-- token bucket per limit and key, taken by one INSERT .. ON CONFLICT DO
-- UPDATE, so that N requests spread over any number of nodes meet a limit
-- of N. The key is a SHA-256 of what is counted (an address, an e-mail,
-- a user id), never the text itself. A row whose bucket is full again
-- (`full_at` passed) carries no state and is deleted by any node, now and
-- then, by a scan: no index but the key's, so each take is a HOT update.
-- Unlogged: a take writes no WAL, so its commit waits for no flush (1.5x
-- to 5x the takes per second of a logged table, bench/rate_limits.sh); after
-- a database crash the buckets start full, and replicas do not have them
-- (every take runs on the primary).
create unlogged table if not exists sovra.rate_limits (
  bucket text not null,
  key bytea not null,
  -- Tokens left as of `at`.
  tokens double precision not null,
  at timestamptz not null,
  -- Whether the last take was allowed (RETURNING sees only the new row).
  allowed boolean not null,
  -- When the bucket is full again and the row may go.
  full_at timestamptz not null,
  primary key (bucket, key)
);

alter table sovra.rate_limits owner to supabase_auth_admin;
revoke all on sovra.rate_limits from anon, authenticated;
