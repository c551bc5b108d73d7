-- Vector buckets (`/storage/v1/vector/*`, Supabase's `storage.vectors`,
-- the API of AWS S3 Vectors) on pgvector.
--
-- The catalog is two tables with RLS: `storage.vector_buckets` and
-- `storage.vector_indexes`. Vectors live in one partitioned table,
-- `storage.vectors`, partitioned by index: each index is a partition of
-- its own with an HNSW index whose operator class matches the index's
-- distance metric. Policies are written once, on `storage.vectors` (as on
-- `storage.objects`), and apply to every index; the partitions themselves
-- are granted to no API role, so they are reached only through the parent.
-- service_role bypasses RLS; anon and authenticated see and change nothing
-- until a policy says so.

create table if not exists storage.vector_buckets (
  id text primary key
    check (id ~ '^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$'),
  owner_id text default (auth.jwt() ->> 'sub'),
  created_at timestamptz not null default now()
);

create table if not exists storage.vector_indexes (
  id uuid primary key default gen_random_uuid(),
  bucket_id text not null references storage.vector_buckets (id),
  name text not null
    check (name ~ '^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$'),
  data_type text not null check (data_type = 'float32'),
  dimension integer not null check (dimension between 1 and 4000),
  distance_metric text not null check (distance_metric in ('cosine', 'euclidean')),
  -- Keys stored with vectors but not usable in filters (S3 Vectors'
  -- `nonFilterableMetadataKeys`).
  non_filterable_keys text[] not null default '{}',
  owner_id text default (auth.jwt() ->> 'sub'),
  created_at timestamptz not null default now(),
  unique (bucket_id, name)
);

alter table storage.vector_buckets enable row level security;
alter table storage.vector_indexes enable row level security;
alter table storage.vector_buckets owner to supabase_storage_admin;
alter table storage.vector_indexes owner to supabase_storage_admin;
-- An index's shape is fixed once made (its partition depends on it).
grant select, insert, delete on storage.vector_buckets, storage.vector_indexes
  to anon, authenticated, service_role;

-- The definer of the functions below makes partitions with pgvector's types,
-- and the storage service prepares its statements (which name them) as the
-- login role, before the role switch.
grant usage on schema extensions to supabase_storage_admin, authenticator;

-- Makes `storage.vectors` when pgvector is installed in `extensions`;
-- returns whether it exists.
create or replace function storage.vector_store_ready() returns boolean
  language plpgsql security definer set search_path = '' as $$
begin
  if to_regclass('storage.vectors') is not null then
    return true;
  end if;
  if to_regtype('extensions.vector') is null then
    return false;
  end if;
  create table storage.vectors (
    index_id uuid not null,
    bucket_id text not null,
    index_name text not null,
    key text not null,
    embedding extensions.vector not null,
    metadata jsonb not null default '{}',
    primary key (index_id, key)
  ) partition by list (index_id);
  alter table storage.vectors enable row level security;
  grant select, insert, update, delete on storage.vectors to anon, authenticated, service_role;
  return true;
end
$$;
alter function storage.vector_store_ready() owner to supabase_storage_admin;
revoke all on function storage.vector_store_ready() from public;

-- A new index gets its partition: the rows' bucket, index name and
-- dimension are checked there, and an HNSW index is built over the
-- embedding cast to the index's dimension (`vector` up to 2000
-- dimensions, `halfvec` above: pgvector's HNSW limits).
create or replace function storage.vector_index_created() returns trigger
  language plpgsql security definer set search_path = '' as $$
declare
  part text := 'vectors_' || replace(new.id::text, '-', '');
  expr text;
  ops text;
begin
  if not storage.vector_store_ready() then
    raise exception 'pgvector is not installed on this database'
      using errcode = '0A000', hint = 'vector_store';
  end if;
  execute format('create table storage.%I partition of storage.vectors for values in (%L)',
    part, new.id);
  execute format(
    'alter table storage.%I add constraint %I check (bucket_id = %L and index_name = %L and extensions.vector_dims(embedding) = %s)',
    part, part || '_shape', new.bucket_id, new.name, new.dimension);
  if new.dimension <= 2000 then
    expr := format('(embedding::extensions.vector(%s))', new.dimension);
    ops := case new.distance_metric when 'cosine' then 'extensions.vector_cosine_ops'
                                    else 'extensions.vector_l2_ops' end;
  else
    expr := format('(embedding::extensions.halfvec(%s))', new.dimension);
    ops := case new.distance_metric when 'cosine' then 'extensions.halfvec_cosine_ops'
                                    else 'extensions.halfvec_l2_ops' end;
  end if;
  execute format('create index %I on storage.%I using hnsw (%s %s)',
    part || '_hnsw', part, expr, ops);
  return null;
end
$$;
alter function storage.vector_index_created() owner to supabase_storage_admin;
revoke all on function storage.vector_index_created() from public;

create or replace function storage.vector_index_deleted() returns trigger
  language plpgsql security definer set search_path = '' as $$
begin
  execute format('drop table if exists storage.%I',
    'vectors_' || replace(old.id::text, '-', ''));
  return null;
end
$$;
alter function storage.vector_index_deleted() owner to supabase_storage_admin;
revoke all on function storage.vector_index_deleted() from public;

drop trigger if exists vector_index_created on storage.vector_indexes;
create trigger vector_index_created after insert on storage.vector_indexes
  for each row execute function storage.vector_index_created();
drop trigger if exists vector_index_deleted on storage.vector_indexes;
create trigger vector_index_deleted after delete on storage.vector_indexes
  for each row execute function storage.vector_index_deleted();

-- pgvector goes into `extensions` when the server has it (migrate.rs does
-- the same after the migrations, and makes `storage.vectors` then, for
-- servers that get it later).
do $$
begin
  if exists (select 1 from pg_available_extensions where name = 'vector') then
    create extension if not exists vector with schema extensions;
  end if;
  perform storage.vector_store_ready();
end
$$;
