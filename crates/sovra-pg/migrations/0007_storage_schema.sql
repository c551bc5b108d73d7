-- The storage service's tables, with Supabase Storage's names, columns and
-- helper functions, so that policies written for Supabase work unchanged.
-- Every API operation runs as the caller, so RLS on these tables decides
-- who may do what; service_role bypasses it.

create table if not exists storage.buckets (
  id text primary key,
  name text not null,
  owner uuid,
  owner_id text,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  public boolean default false,
  avif_autodetection boolean default false,
  file_size_limit bigint,
  allowed_mime_types text[],
  type text not null default 'STANDARD'
);
create unique index if not exists bname on storage.buckets using btree (name);

create table if not exists storage.objects (
  id uuid primary key default gen_random_uuid(),
  bucket_id text references storage.buckets (id),
  name text,
  owner uuid,
  owner_id text,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  last_accessed_at timestamptz default now(),
  metadata jsonb,
  path_tokens text[] generated always as (string_to_array(name, '/')) stored,
  version text,
  user_metadata jsonb
);
create unique index if not exists bucketid_objname on storage.objects using btree (bucket_id, name);
-- Listing a folder scans the names under a prefix in byte order.
create index if not exists name_prefix_search on storage.objects using btree (name text_pattern_ops);

alter table storage.buckets enable row level security;
alter table storage.objects enable row level security;

alter table storage.buckets owner to supabase_storage_admin;
alter table storage.objects owner to supabase_storage_admin;

grant usage on schema storage to anon, authenticated, service_role;
grant all on storage.buckets, storage.objects to anon, authenticated, service_role;

-- The helpers Supabase policies call.
create or replace function storage.foldername(name text) returns text[]
  language plpgsql immutable as $$
declare _parts text[];
begin
  select string_to_array(name, '/') into _parts;
  return _parts[1 : array_length(_parts, 1) - 1];
end
$$;

create or replace function storage.filename(name text) returns text
  language plpgsql immutable as $$
declare _parts text[];
begin
  select string_to_array(name, '/') into _parts;
  return _parts[array_length(_parts, 1)];
end
$$;

create or replace function storage.extension(name text) returns text
  language plpgsql immutable as $$
declare _parts text[]; _filename text;
begin
  select string_to_array(name, '/') into _parts;
  select _parts[array_length(_parts, 1)] into _filename;
  return reverse(split_part(reverse(_filename), '.', 1));
end
$$;

create or replace function storage.operation() returns text
  language sql stable as $$ select current_setting('storage.operation', true) $$;

alter function storage.foldername(text) owner to supabase_storage_admin;
alter function storage.filename(text) owner to supabase_storage_admin;
alter function storage.extension(text) owner to supabase_storage_admin;
alter function storage.operation() owner to supabase_storage_admin;
grant execute on function storage.foldername(text), storage.filename(text),
  storage.extension(text), storage.operation() to anon, authenticated, service_role;

create or replace function storage.update_updated_at_column() returns trigger
  language plpgsql as $$
begin
  new.updated_at = now();
  return new;
end
$$;
alter function storage.update_updated_at_column() owner to supabase_storage_admin;
drop trigger if exists update_objects_updated_at on storage.objects;
create trigger update_objects_updated_at before update on storage.objects
  for each row execute function storage.update_updated_at_column();

-- A DELETE in SQL would orphan the stored bytes; only the storage API
-- (which sets storage.allow_delete_query for its own statement) deletes rows.
create or replace function storage.protect_delete() returns trigger
  language plpgsql as $$
begin
  if coalesce(current_setting('storage.allow_delete_query', true), 'false') <> 'true' then
    raise exception 'Direct deletion from storage tables is not allowed. Use the Storage API instead.'
      using hint = 'This prevents accidental data loss from orphaned objects.',
            errcode = '42501';
  end if;
  return null;
end
$$;
alter function storage.protect_delete() owner to supabase_storage_admin;
drop trigger if exists protect_objects_delete on storage.objects;
create trigger protect_objects_delete before delete on storage.objects
  for each statement execute function storage.protect_delete();
drop trigger if exists protect_buckets_delete on storage.buckets;
create trigger protect_buckets_delete before delete on storage.buckets
  for each statement execute function storage.protect_delete();

-- Resumable (TUS) uploads in progress: Sovra's own bookkeeping.
create table if not exists sovra.storage_uploads (
  id uuid primary key,
  bucket_id text not null,
  name text not null,
  upload_length bigint,
  upload_offset bigint not null default 0,
  parts integer not null default 0,
  content_type text,
  cache_control text,
  user_metadata jsonb,
  upsert boolean not null default false,
  owner_id text,
  -- Made through a signed upload URL: any holder of the id may continue it.
  signed boolean not null default false,
  locked_until timestamptz,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null
);
grant usage on schema sovra to service_role;
grant select, insert, update, delete on sovra.storage_uploads to service_role;

-- The storage service prepares its statements once per connection, before
-- the role switch: the login role may look names up in these schemas (it
-- still has no privilege on any table in them).
grant usage on schema storage, sovra to authenticator;
