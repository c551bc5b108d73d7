-- Sovra as an OAuth 2.1 / OpenID Connect provider (issue #17 part 4), in
-- GoTrue's tables so that a Supabase project's auth schema moves over:
-- the clients apps register, the authorization requests a consent page
-- approves or denies, the consents a user gave, and the sessions an OAuth
-- client holds (auth.sessions.oauth_client_id). Secrets are stored only as
-- hashes: client secrets and authorization codes as SHA-256.
create table if not exists auth.oauth_clients (
  id uuid primary key,
  client_secret_hash text,
  registration_type text not null check (registration_type in ('dynamic', 'manual')),
  -- Comma-separated, as GoTrue keeps them (a redirect URI has no comma).
  redirect_uris text not null,
  grant_types text not null,
  client_name text check (char_length(client_name) <= 1024),
  client_uri text check (char_length(client_uri) <= 2048),
  logo_uri text check (char_length(logo_uri) <= 2048),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  deleted_at timestamptz,
  client_type text not null default 'confidential' check (client_type in ('public', 'confidential')),
  token_endpoint_auth_method text not null
    check (token_endpoint_auth_method in ('none', 'client_secret_basic', 'client_secret_post')),
  -- The scopes the client may ask for (space-separated); null: all.
  scope text
);
create index if not exists oauth_clients_deleted_at_idx on auth.oauth_clients (deleted_at);

create table if not exists auth.oauth_authorizations (
  id uuid primary key,
  -- What the consent page is given (`?authorization_id=`), random.
  authorization_id text not null unique,
  client_id uuid not null references auth.oauth_clients (id) on delete cascade,
  user_id uuid references auth.users (id) on delete cascade,
  redirect_uri text not null,
  scope text not null,
  state text,
  resource text,
  code_challenge text,
  code_challenge_method text check (code_challenge_method in ('s256', 'plain')),
  response_type text not null default 'code' check (response_type = 'code'),
  status text not null default 'pending' check (status in ('pending', 'approved', 'denied', 'expired')),
  -- SHA-256 of the code handed to the client, never the code.
  authorization_code text unique,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  approved_at timestamptz,
  nonce text
);
create index if not exists oauth_authorizations_expires_at_idx on auth.oauth_authorizations (expires_at);

create table if not exists auth.oauth_consents (
  id uuid primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  client_id uuid not null references auth.oauth_clients (id) on delete cascade,
  scopes text not null,
  granted_at timestamptz not null default now(),
  revoked_at timestamptz,
  unique (user_id, client_id)
);

alter table auth.sessions add column if not exists oauth_client_id uuid
  references auth.oauth_clients (id) on delete cascade;
alter table auth.sessions add column if not exists scopes text;
create index if not exists sessions_oauth_client_id_idx on auth.sessions (oauth_client_id);

-- The keys ID tokens are signed with (ES256), sealed under Auth's service
-- key: one active, older ones still published until retired.
create table if not exists sovra.oauth_signing_keys (
  kid text primary key,
  alg text not null default 'ES256',
  -- The private JWK, sealed; its public half in the clear for the JWK set.
  sealed_jwk text not null,
  public_jwk jsonb not null,
  active boolean not null default true,
  created_at timestamptz not null default now()
);
create unique index if not exists oauth_signing_keys_one_active on sovra.oauth_signing_keys (active) where active;

do $$
declare
  t text;
begin
  foreach t in array array['oauth_clients', 'oauth_authorizations', 'oauth_consents'] loop
    execute format('alter table auth.%I owner to supabase_auth_admin', t);
    execute format('revoke all on auth.%I from anon, authenticated', t);
    execute format('grant all on auth.%I to service_role', t);
  end loop;
end
$$;
alter table sovra.oauth_signing_keys owner to supabase_auth_admin;
revoke all on sovra.oauth_signing_keys from anon, authenticated, service_role;
