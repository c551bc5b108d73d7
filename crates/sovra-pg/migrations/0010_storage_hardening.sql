-- Storage hardening.
--
-- 1. `storage.objects.version` names the stored bytes of an object. A
--    caller who could write it could point their own row at bytes they may
--    not read (another object's version, learnt from a public ETag), or
--    have the API delete those bytes along with their own row. Only the
--    storage API writes it: it sets `storage.allow_version_write` for its
--    own upload and copy statements, exactly as deletes are guarded by
--    `storage.allow_delete_query`. Superusers (restores) are exempt, and so
--    are data-only restores with `session_replication_role = replica`.
create or replace function storage.protect_version() returns trigger
  language plpgsql as $$
begin
  if (tg_op = 'INSERT' and new.version is null)
     or (tg_op = 'UPDATE' and new.version is not distinct from old.version) then
    return new;
  end if;
  if coalesce(current_setting('storage.allow_version_write', true), 'false') = 'true'
     or (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then
    return new;
  end if;
  raise exception 'The version of a stored object is written only by the Storage API.'
    using hint = 'Upload, update or copy the object through the Storage API instead.',
          errcode = '42501';
end
$$;
alter function storage.protect_version() owner to supabase_storage_admin;
drop trigger if exists protect_objects_version on storage.objects;
create trigger protect_objects_version before insert or update of version on storage.objects
  for each row execute function storage.protect_version();

-- 2. A resumable upload belongs to the caller who started it: `creator` is
--    a fingerprint of that caller's role and identity (its `sub`, or for a
--    caller without one, its other claims), compared on every request.
alter table sovra.storage_uploads add column if not exists creator text;
