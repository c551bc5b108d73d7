-- The reference of bench/jobs.sh: the same three pgmq_public calls that one
-- Sovra cycle makes, each in the minimal transaction a request needs (role
-- and claims set, the call, commit).
BEGIN;
select set_config('role', 'service_role', true), set_config('request.jwt.claims', '{"role":"service_role"}', true), set_config('request.method', 'POST', true), set_config('request.path', '/rpc/send', true);
select * from pgmq_public.send('bench', '{"n": 1}'::jsonb);
COMMIT;
BEGIN;
select set_config('role', 'service_role', true), set_config('request.jwt.claims', '{"role":"service_role"}', true), set_config('request.method', 'POST', true), set_config('request.path', '/rpc/read', true);
select msg_id from pgmq_public.read('bench', 30, 1) \gset
COMMIT;
BEGIN;
select set_config('role', 'service_role', true), set_config('request.jwt.claims', '{"role":"service_role"}', true), set_config('request.method', 'POST', true), set_config('request.path', '/rpc/delete', true);
select pgmq_public.delete('bench', :msg_id);
COMMIT;
