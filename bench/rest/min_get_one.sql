BEGIN;
select set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{"sub":"00000000-0000-0000-0000-00000000000a","role":"authenticated","aud":"authenticated"}', true), set_config('request.method', 'GET', true), set_config('request.path', '/items', true);
select row_to_json(i)::text from public.items i where i.id = 2;
COMMIT;
