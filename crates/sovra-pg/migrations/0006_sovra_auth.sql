-- Sovra's own additions to Auth: invite codes that gate sign-up, and API
-- keys for machine-to-machine access. Both keep only SHA-256 hashes of
-- their secrets and belong to the auth admin role.
create table if not exists sovra.invite_codes (
  id uuid primary key,
  code_hash text not null unique,
  note text,
  created_at timestamptz not null default now(),
  expires_at timestamptz,
  used_at timestamptz,
  used_by uuid
);

create table if not exists sovra.api_keys (
  id uuid primary key,
  name text not null,
  role text not null,
  key_hash text not null unique,
  key_prefix text not null,
  created_at timestamptz not null default now(),
  revoked_at timestamptz
);

alter table sovra.invite_codes owner to supabase_auth_admin;
alter table sovra.api_keys owner to supabase_auth_admin;
grant usage on schema sovra to supabase_auth_admin;

-- Lookups Auth makes on every sign-in and factor listing.
create index if not exists users_lower_email_idx on auth.users (lower(email));
create index if not exists mfa_factors_user_id_idx on auth.mfa_factors (user_id);
create index if not exists flow_state_user_id_idx on auth.flow_state (user_id);
