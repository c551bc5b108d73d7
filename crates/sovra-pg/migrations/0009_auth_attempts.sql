-- Sovra's bookkeeping against code guessing (issue #12): failed attempts
-- per issued one-time code, per MFA challenge and per factor, and the last
-- TOTP time step each factor accepted (so a code cannot be replayed within
-- its window). Kept beside GoTrue's tables, not in them, so that a pg_dump
-- of a Supabase project's auth schema still loads unchanged.
create table if not exists sovra.auth_attempts (
  -- A user (one-time codes), an MFA challenge or an MFA factor.
  subject uuid not null,
  -- The token column of a one-time code, 'challenge' or 'factor'.
  kind text not null,
  -- When the code or challenge counted here was issued: a fresh one
  -- starts from zero.
  issued_at timestamptz not null,
  failures integer not null default 0,
  last_failure_at timestamptz not null default now(),
  primary key (subject, kind)
);

create table if not exists sovra.mfa_totp_steps (
  factor_id uuid primary key references auth.mfa_factors (id) on delete cascade,
  last_step bigint not null
);

alter table sovra.auth_attempts owner to supabase_auth_admin;
alter table sovra.mfa_totp_steps owner to supabase_auth_admin;
revoke all on sovra.auth_attempts from anon, authenticated;
revoke all on sovra.mfa_totp_steps from anon, authenticated;
