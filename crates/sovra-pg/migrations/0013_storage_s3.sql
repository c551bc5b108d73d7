-- The S3 protocol of storage (`/storage/v1/s3`).
--
-- S3 access keys of the project: the id and a description only. The
-- secret is derived from the project's service key and never stored.
create table if not exists sovra.s3_access_keys (
  access_key_id text primary key,
  description text not null default '',
  created_at timestamptz not null default now()
);

-- Multipart uploads in progress and their parts (bytes in the backend
-- under `<tenant>/uploads/s3-<id>/`).
create table if not exists sovra.s3_multipart_uploads (
  id uuid primary key,
  bucket_id text not null,
  name text not null,
  owner_id text,
  -- The fingerprint of the caller who started it (role and identity).
  creator text not null,
  content_type text not null,
  cache_control text not null,
  user_metadata jsonb,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null
);
create index if not exists s3_multipart_uploads_bucket_name
  on sovra.s3_multipart_uploads (bucket_id, name);
create table if not exists sovra.s3_multipart_parts (
  upload_id uuid not null references sovra.s3_multipart_uploads (id) on delete cascade,
  part_number integer not null check (part_number between 1 and 10000),
  etag text not null,
  size bigint not null,
  created_at timestamptz not null default now(),
  primary key (upload_id, part_number)
);
grant select, insert, update, delete
  on sovra.s3_access_keys, sovra.s3_multipart_uploads, sovra.s3_multipart_parts
  to service_role;
