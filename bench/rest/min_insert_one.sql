BEGIN;
select set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{"sub":"00000000-0000-0000-0000-00000000000a","role":"authenticated","aud":"authenticated"}', true), set_config('request.method', 'POST', true), set_config('request.path', '/items', true);
insert into public.items (name, category_id) values ('new', 1);
COMMIT;
