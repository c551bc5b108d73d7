BEGIN;
select set_config('role', 'authenticated', true), set_config('request.jwt.claims', '{"sub":"00000000-0000-0000-0000-00000000000a","role":"authenticated","aud":"authenticated"}', true), set_config('request.method', 'GET', true), set_config('request.path', '/items', true);
select coalesce(json_agg(t), '[]')::text from (select i.*, (select row_to_json(c) from (select c.name from public.categories c where c.id = i.category_id) c) as categories from public.items i order by i.id limit 20) t;
COMMIT;
