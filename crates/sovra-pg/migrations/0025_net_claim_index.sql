-- The delivery worker's claim (crates/sovra-net/src/worker.rs) takes due
-- rows `order by next_attempt_at, id limit n`. With an index on
-- `next_attempt_at` alone, every request queued by one statement has the
-- same `next_attempt_at`, so each claim sorted the whole group (an
-- incremental sort over every due row) to hand out a few: 20,000 requests
-- queued at once were delivered at about 300/s (bench/webhooks.sh). With
-- the id in the index the claim reads only the rows it takes.
create index if not exists http_request_queue_due_id on net.http_request_queue (next_attempt_at, id);
drop index if exists net.http_request_queue_due;
