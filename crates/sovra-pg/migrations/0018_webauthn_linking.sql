-- Passkeys and WebAuthn MFA (issue #17, part 2), and manual identity
-- linking (the last section).
--
-- A WebAuthn MFA factor keeps its credential where GoTrue keeps it:
-- auth.mfa_factors.web_authn_credential (go-webauthn's credential JSON:
-- id and publicKey in standard base64, authenticator.signCount), and its
-- ceremony state in auth.mfa_challenges.web_authn_session_data. Passkeys
-- (passwordless sign-in) and their single-use challenges are Sovra's own
-- tables in the sovra schema, so that a pg_dump of a Supabase project's
-- auth schema still loads unchanged.
alter table auth.mfa_factors add column if not exists web_authn_credential jsonb;
alter table auth.mfa_factors add column if not exists web_authn_aaguid uuid;
alter table auth.mfa_challenges add column if not exists web_authn_session_data jsonb;
-- One credential is one factor.
create unique index if not exists mfa_factors_web_authn_credential_id_idx
  on auth.mfa_factors ((web_authn_credential ->> 'id'))
  where web_authn_credential is not null;

create table if not exists sovra.webauthn_credentials (
  id uuid primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  -- The authenticator's credential id (raw bytes): unique server-wide.
  credential_id bytea not null unique check (octet_length(credential_id) between 1 and 1023),
  -- The COSE key as the authenticator encoded it.
  public_key bytea not null check (octet_length(public_key) <= 2048),
  algorithm integer not null,
  sign_count bigint not null default 0,
  aaguid uuid,
  transports text[] not null default '{}',
  backup_eligible boolean not null default false,
  backed_up boolean not null default false,
  friendly_name text check (char_length(friendly_name) <= 120),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  last_used_at timestamptz
);
create index if not exists webauthn_credentials_user_id_idx on sovra.webauthn_credentials (user_id);

-- One row per ceremony started: used once (deleted when read) and only
-- within auth.webauthn.challenge_expiry.
create table if not exists sovra.webauthn_challenges (
  id uuid primary key,
  -- The signed-in user of a registration; null for a sign-in.
  user_id uuid references auth.users (id) on delete cascade,
  kind text not null check (kind in ('registration', 'authentication')),
  challenge bytea not null,
  created_at timestamptz not null default now()
);
create index if not exists webauthn_challenges_created_at_idx on sovra.webauthn_challenges (created_at);

alter table sovra.webauthn_credentials owner to supabase_auth_admin;
alter table sovra.webauthn_challenges owner to supabase_auth_admin;
revoke all on sovra.webauthn_credentials from anon, authenticated;
revoke all on sovra.webauthn_challenges from anon, authenticated;

-- Manual identity linking (auth.manual_linking_enabled): a redirect flow
-- started by a signed-in user links the provider's identity to that user
-- instead of signing in.
alter table sovra.oauth_flows add column if not exists link_user_id uuid
  references auth.users (id) on delete cascade;
