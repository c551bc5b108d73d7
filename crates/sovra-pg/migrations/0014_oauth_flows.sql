-- Sign-in through external OAuth/OIDC providers (issue #17): one row per
-- `/authorize` redirect, found again by the signed `state` the provider
-- hands back to `/callback`, used once (deleted when read) and only within
-- its lifetime. Kept beside GoTrue's tables, so that a pg_dump of a
-- Supabase project's auth schema still loads unchanged.
create table if not exists sovra.oauth_flows (
  id uuid primary key,
  provider text not null,
  -- Where the user returns (already checked against the allow-list).
  redirect_to text not null,
  -- The app's PKCE challenge (auth-js' flowType 'pkce'); null: implicit.
  code_challenge text,
  code_challenge_method text check (code_challenge_method in ('s256', 'plain')),
  -- Sovra's own PKCE verifier and OIDC nonce towards the provider.
  provider_verifier text not null,
  nonce text not null,
  created_at timestamptz not null default now()
);
create index if not exists oauth_flows_created_at_idx on sovra.oauth_flows (created_at);

alter table sovra.oauth_flows owner to supabase_auth_admin;
revoke all on sovra.oauth_flows from anon, authenticated;
