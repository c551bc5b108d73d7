//! Sovra's configuration: what an operator can set, where it comes from, and
//! whether it makes sense.
//!
//! Sources, later ones winning: built-in defaults, a TOML file (`sovra.toml`
//! or the path given), `SOVRA_*` environment variables, then command-line
//! flags (applied by the binary through [`Config::set`]). Every option is
//! listed once in [`OPTIONS`]; that table drives the environment mapping, the
//! validation messages and the generated `docs/config.md`.
//!
//! This crate does no other IO than reading the file it is given, and it never
//! reads the process environment itself: the caller passes the variables in,
//! so that tests stay hermetic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default file name looked up in the working directory.
pub const DEFAULT_FILE: &str = "sovra.toml";

/// The data directory when none is configured.
pub const DEFAULT_DATA_DIR: &str = "./sovra-data";

/// The data directory when none is configured and Sovra runs as root: its
/// PostgreSQL then runs as the `postgres` system user, which must pass
/// through every directory above the data directory, and a checkout under
/// `/root` (mode 0700) is closed to it. `/var/lib` is open to it.
pub const ROOT_DATA_DIR: &str = "/var/lib/sovra";

/// The data directory to use when none is configured: [`ROOT_DATA_DIR`]
/// for root, unless [`DEFAULT_DATA_DIR`] already holds a project
/// (`default_holds_project`: its `keys.json` exists), which stays where it
/// is so that an existing installation keeps its keys and data.
pub fn default_data_dir(root: bool, default_holds_project: bool) -> &'static str {
    if root && !default_holds_project {
        ROOT_DATA_DIR
    } else {
        DEFAULT_DATA_DIR
    }
}

/// A configuration that is missing, unreadable or wrong. The message always
/// names the option (or the file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown configuration option `{0}` (see docs/config.md for the list)")]
    Unknown(String),
    #[error("invalid value for `{option}`: {message}")]
    Invalid { option: String, message: String },
}

impl ConfigError {
    fn invalid(option: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            option: option.to_owned(),
            message: message.into(),
        }
    }
}

/// The shape of one option's value, used to parse environment variables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String,
    Integer,
    Bool,
}

/// One documented option.
#[derive(Clone, Copy, Debug)]
pub struct OptionDoc {
    /// Dotted path in the TOML file, e.g. `server.listen`.
    pub key: &'static str,
    pub kind: Kind,
    /// The default, as it would be written in TOML; empty when unset.
    pub default: &'static str,
    pub doc: &'static str,
}

impl OptionDoc {
    /// The environment variable that overrides this option:
    /// `SOVRA_` followed by the key in upper case with dots as underscores.
    pub fn env_name(&self) -> String {
        format!("SOVRA_{}", self.key.replace('.', "_").to_ascii_uppercase())
    }
}

/// Every option Sovra reads, in the order the documentation lists them.
pub const OPTIONS: &[OptionDoc] = &[
    OptionDoc {
        key: "data_dir",
        kind: Kind::String,
        default: "\"./sovra-data\"",
        doc: "Directory that holds everything Sovra keeps on disk: the embedded PostgreSQL cluster, the signing keys, stored files. Created on first start. When Sovra runs as root the default is `/var/lib/sovra` (its PostgreSQL runs as the `postgres` user, which cannot reach a directory under `/root`), unless `./sovra-data` already holds a project.",
    },
    OptionDoc {
        key: "server.listen",
        kind: Kind::String,
        default: "\"127.0.0.1:54321\"",
        doc: "Address and port the HTTP server listens on. Use `0.0.0.0:54321` to accept connections from other machines.",
    },
    OptionDoc {
        key: "server.public_url",
        kind: Kind::String,
        default: "",
        doc: "URL clients use to reach Sovra, printed at start and used as the token issuer base. Defaults to `http://` plus the listen address.",
    },
    OptionDoc {
        key: "server.base_domain",
        kind: Kind::String,
        default: "",
        doc: "Domain whose subdomains name tenants: with `example.com`, a request whose Host is `acme.example.com` goes to tenant `acme`, as Supabase's project subdomains do (see `docs/tenants.md`). Empty: tenants are reached at `/t/{name}` only.",
    },
    OptionDoc {
        key: "server.body_limit",
        kind: Kind::Integer,
        default: "10485760",
        doc: "Largest request body accepted, in bytes; larger bodies get 413.",
    },
    OptionDoc {
        key: "server.shutdown_timeout",
        kind: Kind::Integer,
        default: "30",
        doc: "Seconds that in-flight requests get to finish after SIGINT or SIGTERM before Sovra stops anyway.",
    },
    OptionDoc {
        key: "server.drain_delay",
        kind: Kind::Integer,
        default: "0",
        doc: "Seconds between SIGINT/SIGTERM and closing: meanwhile `/ready` answers 503 (so a load balancer stops sending) while requests are still served. Then realtime clients are told to reconnect (close code 1001), the change feed is released for another instance, and in-flight requests get `server.shutdown_timeout`. Set it to your balancer's health-check interval times its fall count; a second signal skips the wait.",
    },
    OptionDoc {
        key: "server.shared_state",
        kind: Kind::String,
        default: "\"auto\"",
        doc: "Where state that several nodes must agree on lives, today auth's rate limits (`auth.rate_limit.*` and a tenant's `mails_per_hour`): `memory` counts in this process (one node; no extra cost), `postgres` counts in each tenant's database (`sovra.rate_limits`, one UPSERT per check), so N requests spread over any number of nodes meet a limit of N. `auto` is `postgres` when `realtime.nats_url` is set (nodes joined into a cluster), else `memory`. See docs/scale-out.md.",
    },
    OptionDoc {
        key: "server.body_idle_timeout",
        kind: Kind::Integer,
        default: "60",
        doc: "Seconds a request body may send nothing before the request is answered with 408 and its connection closed. Applies to every route that reads a body, uploads included (an authorised upload that stalls too). At least 1.",
    },
    OptionDoc {
        key: "server.header_read_timeout",
        kind: Kind::Integer,
        default: "30",
        doc: "Seconds a client gets to send the headers of a request (WebSocket handshakes included), and an idle keep-alive connection to start the next one, before the connection is closed; HTTP/1 and HTTP/2 (h2c) alike. At least 1.",
    },
    OptionDoc {
        key: "server.max_connections_per_client",
        kind: Kind::Integer,
        default: "1000",
        doc: "Open connections one client may hold at once (an IPv4 address, or an IPv6 /64); a new connection beyond it is closed at once and counted in `sovra_http_connections_refused_total`. Loopback peers and `auth.trusted_proxies` are not counted (a reverse proxy carries many clients). 0 for no cap.",
    },
    OptionDoc {
        key: "server.require_apikey",
        kind: Kind::Bool,
        default: "false",
        doc: "When true, requests without an `apikey` header or query parameter are refused with 401; when false they run as `anon` (what local Supabase does).",
    },
    OptionDoc {
        key: "server.tenant_idle_timeout",
        kind: Kind::Integer,
        default: "300",
        doc: "Seconds after its last request when a tenant other than the default one is stopped (pools, schema cache, services), unless it has realtime connections; its next request starts it again (see `docs/tenants.md`).",
    },
    OptionDoc {
        key: "server.tenant_storage_max_bytes",
        kind: Kind::Integer,
        default: "0",
        doc: "Quota of every tenant other than the default one unless its own `storage_max_bytes` says otherwise: bytes of stored objects; an upload once they are used up is refused with Storage's 413. 0: no quota.",
    },
    OptionDoc {
        key: "server.tenant_database_max_bytes",
        kind: Kind::Integer,
        default: "0",
        doc: "Quota of every tenant other than the default one unless its own `database_max_bytes` says otherwise: size of its database (`pg_database_size`); over it the tenant's API sessions are read-only (writes get PostgreSQL's 25006 in PostgREST's shape) until it is under again, and from 80% a warning is logged. 0: no quota.",
    },
    OptionDoc {
        key: "server.tenant_database_check_interval",
        kind: Kind::Integer,
        default: "60",
        doc: "Seconds between two checks of the tenants' database sizes against their `database_max_bytes` quota. At least 1.",
    },
    OptionDoc {
        key: "server.tenant_mails_per_hour",
        kind: Kind::Integer,
        default: "0",
        doc: "Quota of every tenant other than the default one unless its own `mails_per_hour` says otherwise: mails its auth sends per hour, all recipients together; more get GoTrue's 429 `over_email_send_rate_limit`. 0: no quota (the per-address `auth.rate_limit.email_sent` still applies).",
    },
    OptionDoc {
        key: "server.tenant_max_concurrent_requests",
        kind: Kind::Integer,
        default: "0",
        doc: "Quota of every tenant other than the default one unless its own `max_concurrent_requests` says otherwise: requests it may have in progress at once; more wait their turn (first come, first served), so that a tenant flooding the server keeps no more than this many busy. 0: no limit (its pool size still bounds its database work).",
    },
    OptionDoc {
        key: "server.tenant_shared_requests",
        kind: Kind::Integer,
        default: "0",
        doc: "Requests in progress that the tenants with a concurrency quota (`max_concurrent_requests`) share while more than one tenant is busy (had a request in the last second; the default tenant is not counted): each such tenant is then held to this number divided by the busy tenants (at least 1, at most its quota), so that a tenant at its quota does not take the whole machine from the others; alone, it has its whole quota. 0: the number of CPU cores the server may use. The share is never below 1; a value of at least the sum of the quotas of the tenants that may be busy at once turns the sharing off.",
    },
    OptionDoc {
        key: "server.tenant_realtime_events_per_second",
        kind: Kind::Integer,
        default: "0",
        doc: "Quota of every tenant other than the default one unless its own `realtime_events_per_second` says otherwise: messages per second all its realtime connections together may send; the connection that goes over is told `Too many messages per second` and closed, as with `realtime.max_events_per_second`. 0: no quota.",
    },
    OptionDoc {
        key: "server.tenant_secrets_key",
        kind: Kind::String,
        default: "\"\"",
        doc: "The key (64 hex digits, e.g. from `openssl rand -hex 32`) that seals the tenants' secrets in the registry (`sovra.tenants`, `sovra.tenant_logins`: signing keys, API keys, provider and hook secrets, `smtp_url`, `database_url`, login passwords) with AES-256-GCM, each bound to its tenant and field. Empty: `<data_dir>/tenant-secrets.key` (made on first start, mode 0600), which is then still used to open what it sealed. Set it to the same value on every node of a cluster. A key that does not open the registry's secrets stops the start with an error naming this option. Losing it loses the tenants' secrets: back it up (see `docs/tenants.md`). Never logged.",
    },
    OptionDoc {
        key: "server.tenant_secrets_old_keys",
        kind: Kind::String,
        default: "\"\"",
        doc: "Earlier values of `server.tenant_secrets_key`, comma-separated (64 hex digits each), used only to open: on start every tenant secret sealed under one of them is sealed again under the current key. Rotate by setting a new `server.tenant_secrets_key`, the old one here, and restarting; remove it here once every node has started. Never logged.",
    },
    OptionDoc {
        key: "log.format",
        kind: Kind::String,
        default: "\"text\"",
        doc: "`text` for people, `json` for log collectors (one object per line).",
    },
    OptionDoc {
        key: "log.level",
        kind: Kind::String,
        default: "\"info\"",
        doc: "Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or `tracing` directives such as `info,sovra_pg=debug`.",
    },
    OptionDoc {
        key: "metrics.token",
        kind: Kind::String,
        default: "",
        doc: "Bearer token that `GET /metrics` requires (`Authorization: Bearer <token>`, compared in constant time); at least 16 characters. Unset: `/metrics` is open, and Sovra warns at start when `server.listen` is not a loopback address.",
    },
    OptionDoc {
        key: "dashboard.session_ttl",
        kind: Kind::Integer,
        default: "3600",
        doc: "Seconds a sign-in to the dashboard at `/_/` lasts (1 to 86400); then the browser is asked for a key again. Sessions live in the server's memory: a restart ends them.",
    },
    OptionDoc {
        key: "database.url",
        kind: Kind::String,
        default: "",
        doc: "PostgreSQL connection URL (`postgres://user:pass@host:5432/db`). When set, Sovra uses that server and manages none; when unset, Sovra runs its own embedded cluster in the data directory. The URL's user runs migrations and the change feed only: requests log in as `authenticator` and auth as `supabase_auth_admin`, never a superuser, with passwords Sovra has PostgreSQL generate and keeps in `sovra.login_secrets`, so that user must be allowed to set those roles' passwords (a superuser, or `CREATEROLE`) and pg_hba.conf must let the two roles log in with a password.",
    },
    OptionDoc {
        key: "database.pool_size",
        kind: Kind::Integer,
        default: "16",
        doc: "Maximum number of pooled connections to PostgreSQL.",
    },
    OptionDoc {
        key: "database.connect_timeout",
        kind: Kind::Integer,
        default: "10",
        doc: "Seconds to wait for a pooled connection before a request fails with 503.",
    },
    OptionDoc {
        key: "database.read_urls",
        kind: Kind::String,
        default: "",
        doc: "Read replicas (streaming standbys of `database.url`'s server), as comma-separated `postgres://host:port` URLs. `GET` and `HEAD` on `/rest/v1` tables and views, and `/rpc` calls of `STABLE` or `IMMUTABLE` functions, run on a replica (round robin); everything else runs on the primary. Only each URL's host and port are used: requests log in with the primary's request login and database, which a physical replica has too. A caller's own writes stay visible to its next reads (`database.read_wait_ms`); a replica that is down or more than `database.read_max_lag` behind is skipped. Empty: every request runs on the primary. See docs/scale-out.md.",
    },
    OptionDoc {
        key: "database.read_max_lag",
        kind: Kind::Integer,
        default: "5",
        doc: "Seconds a read replica may lag behind the primary (1 to 3600) before reads skip it and go to the primary, until it catches up. Checked every second; `/ready` and `/metrics` report each replica.",
    },
    OptionDoc {
        key: "database.read_wait_ms",
        kind: Kind::Integer,
        default: "100",
        doc: "Milliseconds (0 to 5000) a read waits for a replica to replay the caller's own last write (its commit position, remembered by this node per caller: the token's `sub`, else its role) before it runs on the primary instead.",
    },
    OptionDoc {
        key: "rest.schemas",
        kind: Kind::String,
        default: "\"public\"",
        doc: "Schemas exposed at `/rest/v1`, comma-separated; the first is the default, the others are chosen with `Accept-Profile`/`Content-Profile`.",
    },
    OptionDoc {
        key: "rest.max_rows",
        kind: Kind::Integer,
        default: "1000",
        doc: "The most rows one read returns (PostgREST's `db-max-rows`); 0 for no cap.",
    },
    OptionDoc {
        key: "rest.plan_enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Answer `Accept: application/vnd.pgrst.plan` with the request's `EXPLAIN` (PostgREST's `db-plan-enabled`; also turned on by the `pgrst.db_plan_enabled` setting of the login role). For development: plans show table sizes and policies.",
    },
    OptionDoc {
        key: "rest.openapi_mode",
        kind: Kind::String,
        default: "\"service-role\"",
        doc: "Who reads the OpenAPI document at `GET /rest/v1/`: `service-role` (only the service role, as hosted Supabase), `follow-privileges` (every caller, listing what its role may use, as PostgREST), `ignore-privileges` (every caller, everything) or `disabled`.",
    },
    OptionDoc {
        key: "rest.idempotency_retention",
        kind: Kind::Integer,
        default: "86400",
        doc: "Seconds the first response to an `Idempotency-Key` on a `/rest/v1` write or `/rpc` call is kept and replayed to the same caller (stored in `sovra.idempotency_keys`, in the request's transaction); a repeat after that runs again. 1 to 2592000 (30 days).",
    },
    OptionDoc {
        key: "embedded.bin_dir",
        kind: Kind::String,
        default: "",
        doc: "Directory with the PostgreSQL server binaries (`initdb`, `postgres`). Found automatically from `pg_config --bindir`, `/usr/lib/postgresql/*/bin` and `PATH` when unset.",
    },
    OptionDoc {
        key: "embedded.port",
        kind: Kind::Integer,
        default: "",
        doc: "Also listen on TCP `127.0.0.1:<port>` (password authentication; the password is in `<data_dir>/pg-password`). Unset: Unix socket inside the data directory only.",
    },
    OptionDoc {
        key: "embedded.system_user",
        kind: Kind::String,
        default: "\"postgres\"",
        doc: "System user that runs the embedded PostgreSQL when Sovra runs as root (PostgreSQL refuses to run as root).",
    },
    OptionDoc {
        key: "embedded.start_timeout",
        kind: Kind::Integer,
        default: "60",
        doc: "Seconds to wait for the embedded PostgreSQL to accept connections.",
    },
    OptionDoc {
        key: "jwt.secret",
        kind: Kind::String,
        default: "",
        doc: "JWT secret (HS256, at least 32 characters). Set it to keep a Supabase project's secret, so the anon and service_role keys already in its apps keep working. Unset: generated on first start and kept in `<data_dir>/keys.json`.",
    },
    OptionDoc {
        key: "jwt.jwks",
        kind: Kind::String,
        default: "",
        doc: "A JWK set (JSON text, or `@/path/to/jwks.json`) of asymmetric keys (RS256, ES256, EdDSA) selected by `kid`. Public keys verify; a private key (with `d`) also signs new tokens.",
    },
    OptionDoc {
        key: "jwt.audience",
        kind: Kind::String,
        default: "",
        doc: "When set, tokens whose `aud` does not include this value are refused. Unset: `aud` is not checked.",
    },
    OptionDoc {
        key: "jwt.jwks_audience",
        kind: Kind::String,
        default: "",
        doc: "Audience required of tokens verified by an external issuer's key (a public-only key in `jwt.jwks`): a token without this value in `aud` is refused. Defaults to `jwt.audience`; one of the two must be set when `jwt.jwks` holds such keys, or Sovra does not start.",
    },
    OptionDoc {
        key: "jwt.jwks_issuer",
        kind: Kind::String,
        default: "",
        doc: "Pins the issuer of tokens verified by an external issuer's key (a public-only key in `jwt.jwks`): a token without exactly this `iss` is refused. Unset: their `iss` is not checked. Sovra's own keys are not affected.",
    },
    OptionDoc {
        key: "jwt.issuer",
        kind: Kind::String,
        default: "\"sovra\"",
        doc: "`iss` claim of the anon and service_role keys Sovra mints.",
    },
    OptionDoc {
        key: "auth.site_url",
        kind: Kind::String,
        default: "",
        doc: "URL of the app that uses Auth: the default target of links in mail, and an allowed `redirect_to`. Defaults to the public URL.",
    },
    OptionDoc {
        key: "auth.redirect_urls",
        kind: Kind::String,
        default: "",
        doc: "Other allowed `redirect_to` URLs, comma-separated, with GoTrue's globs matched on the parsed URL: `*` within one host label or path segment, `**` across them (`http://localhost:3000/**`, `https://*-team.vercel.app/**`); scheme, host, port and path are matched separately, userinfo is refused and the query and fragment are never matched by a wildcard (see docs/security.md). An invalid pattern stops Sovra at start. Anything else falls back to the site URL.",
    },
    OptionDoc {
        key: "auth.jwt_expiry",
        kind: Kind::Integer,
        default: "3600",
        doc: "Lifetime of access tokens, in seconds.",
    },
    OptionDoc {
        key: "auth.disable_signup",
        kind: Kind::Bool,
        default: "false",
        doc: "Refuse new sign-ups (admins can still create and invite users).",
    },
    OptionDoc {
        key: "auth.email_autoconfirm",
        kind: Kind::Bool,
        default: "false",
        doc: "Treat new email addresses as confirmed: sign-up returns a session at once instead of mailing a confirmation.",
    },
    OptionDoc {
        key: "auth.phone_autoconfirm",
        kind: Kind::Bool,
        default: "false",
        doc: "Treat new phone numbers as confirmed.",
    },
    OptionDoc {
        key: "auth.anonymous_users",
        kind: Kind::Bool,
        default: "false",
        doc: "Allow anonymous sign-ins (`signInAnonymously`).",
    },
    OptionDoc {
        key: "auth.password_min_length",
        kind: Kind::Integer,
        default: "6",
        doc: "Shortest accepted password.",
    },
    OptionDoc {
        key: "auth.password_requirements",
        kind: Kind::String,
        default: "\"\"",
        doc: "Character classes a password must contain: empty, `letters_digits`, `lower_upper_letters_digits` or `lower_upper_letters_digits_symbols`.",
    },
    OptionDoc {
        key: "auth.refresh_token_reuse_interval",
        kind: Kind::Integer,
        default: "10",
        doc: "Seconds during which a just-used refresh token may be presented again (a lost response, concurrent tabs): it answers with the session's live refresh token that descends from it, not a new one; later reuse revokes the whole session.",
    },
    OptionDoc {
        key: "auth.session_timebox",
        kind: Kind::Integer,
        default: "0",
        doc: "Sessions end this many seconds after sign-in; 0 for never.",
    },
    OptionDoc {
        key: "auth.session_inactivity_timeout",
        kind: Kind::Integer,
        default: "0",
        doc: "Sessions end after this many seconds without a token refresh; 0 for never.",
    },
    OptionDoc {
        key: "auth.otp_expiry",
        kind: Kind::Integer,
        default: "3600",
        doc: "Seconds that codes and links in mail stay valid.",
    },
    OptionDoc {
        key: "auth.email_max_frequency",
        kind: Kind::Integer,
        default: "60",
        doc: "Least number of seconds between two mails of the same kind to one user.",
    },
    OptionDoc {
        key: "auth.secure_password_change",
        kind: Kind::Bool,
        default: "false",
        doc: "Require a code from `/reauthenticate` to change the password in a session older than 24 hours.",
    },
    OptionDoc {
        key: "auth.double_confirm_changes",
        kind: Kind::Bool,
        default: "true",
        doc: "Email changes must be confirmed from both the old and the new address.",
    },
    OptionDoc {
        key: "auth.invite_only",
        kind: Kind::Bool,
        default: "false",
        doc: "Sign-up requires an invite code (made with `POST /auth/v1/admin/invite_codes`), passed as `invite_code` in the sign-up data.",
    },
    OptionDoc {
        key: "auth.mfa_max_factors",
        kind: Kind::Integer,
        default: "10",
        doc: "Most verified MFA factors per user.",
    },
    OptionDoc {
        key: "auth.code_attempts",
        kind: Kind::Integer,
        default: "5",
        doc: "Wrong guesses one issued six-digit code (mail, SMS) or one MFA challenge takes before it is invalidated; the owner's next fresh code starts from zero. An MFA factor that fails this often in a row also waits 1, 2, 4 … up to 300 seconds between further attempts (1–100).",
    },
    OptionDoc {
        key: "auth.trusted_proxies",
        kind: Kind::String,
        default: "\"\"",
        doc: "Proxies whose `X-Forwarded-For` is believed (comma-separated addresses or CIDR blocks). Requests from anywhere else are attributed to their TCP peer.",
    },
    OptionDoc {
        key: "auth.hash_concurrency",
        kind: Kind::Integer,
        default: "0",
        doc: "Threads that hash passwords, each keeping one 19 MiB buffer for its life; 0 for one per core. At most 256. They are Sovra's own, separate from the threads file transfers use.",
    },
    OptionDoc {
        key: "auth.hash_queue",
        kind: Kind::Integer,
        default: "64",
        doc: "Requests that may wait for a password-hashing thread (sign-up, sign-in, password changes, admin). When the threads are busy and this many wait, more are refused at once with 429 `over_request_rate_limit`. At most 100000; 0 refuses whenever every thread is busy.",
    },
    OptionDoc {
        key: "auth.smtp_url",
        kind: Kind::String,
        default: "",
        doc: "SMTP server for mail: `smtp://user:pass@host:587` (STARTTLS) or `smtps://user:pass@host:465`. Unset: mail goes to the local mailbox in `<data_dir>/mailbox`, read with `sovra mail`.",
    },
    OptionDoc {
        key: "auth.smtp_from",
        kind: Kind::String,
        default: "\"Sovra <noreply@localhost>\"",
        doc: "Sender of mail.",
    },
    OptionDoc {
        key: "auth.templates_dir",
        kind: Kind::String,
        default: "",
        doc: "Directory of mail templates (`confirmation.txt`, `invite.txt`, `magic_link.txt`, `recovery.txt`, `email_change.txt`, `reauthentication.txt`, `sms.txt`); a first line `Subject: ...` sets the subject. Missing files keep the built-in text.",
    },
    OptionDoc {
        key: "auth.rate_limit.sign_in",
        kind: Kind::Integer,
        default: "30",
        doc: "Sign-ins and sign-ups per 5 minutes, per client address and per email or phone from one client address (so guesses from elsewhere cannot lock the owner out); a token bucket of this size, refilled continuously at this rate. Client addresses: IPv4 as is, IPv6 by /64. 0 for no limit.",
    },
    OptionDoc {
        key: "auth.rate_limit.verify",
        kind: Kind::Integer,
        default: "30",
        doc: "Code and link verifications (and MFA verifications) per 5 minutes per client address (token bucket; IPv6 by /64).",
    },
    OptionDoc {
        key: "auth.rate_limit.token_refresh",
        kind: Kind::Integer,
        default: "150",
        doc: "Token refreshes per 5 minutes per client address (token bucket; IPv6 by /64).",
    },
    OptionDoc {
        key: "auth.rate_limit.otp",
        kind: Kind::Integer,
        default: "30",
        doc: "Requests for codes, magic links and recovery mail per 5 minutes per client address (token bucket; IPv6 by /64).",
    },
    OptionDoc {
        key: "auth.rate_limit.email_sent",
        kind: Kind::Integer,
        default: "30",
        doc: "Mails (and text messages) per hour per address (token bucket).",
    },
    OptionDoc {
        key: "auth.rate_limit.anonymous",
        kind: Kind::Integer,
        default: "30",
        doc: "Anonymous sign-ins per hour per client address (token bucket; IPv6 by /64).",
    },
    OptionDoc {
        key: "auth.hook.custom_access_token.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Turn on the custom access token hook: called whenever an access token is minted (sign-in, refresh, verify, MFA) with `{user_id, claims, authentication_method}`; the `claims` it answers replace the token's (GoTrue's `GOTRUE_HOOK_CUSTOM_ACCESS_TOKEN_ENABLED`). See docs/auth.md#auth-hooks.",
    },
    OptionDoc {
        key: "auth.hook.custom_access_token.uri",
        kind: Kind::String,
        default: "\"\"",
        doc: "Where the custom access token hook goes: `pg-functions://postgres/<schema>/<function>` (a function `(event jsonb) returns jsonb` that Auth's role may execute), `https://…`, or `http://` to localhost.",
    },
    OptionDoc {
        key: "auth.hook.custom_access_token.secrets",
        kind: Kind::String,
        default: "\"\"",
        doc: "Standard Webhooks secrets of an HTTP custom access token hook, `v1,whsec_<base64>`, several separated by `|`; requests are signed with each (`webhook-signature`). Never logged.",
    },
    OptionDoc {
        key: "auth.hook.before_user_created.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Turn on the before-user-created hook: shown every user about to be created (`{metadata, user}`); an `error` object in its answer refuses the sign-up (GoTrue's `GOTRUE_HOOK_BEFORE_USER_CREATED_ENABLED`). See docs/auth.md#auth-hooks.",
    },
    OptionDoc {
        key: "auth.hook.before_user_created.uri",
        kind: Kind::String,
        default: "\"\"",
        doc: "Where the before user created hook goes: `pg-functions://postgres/<schema>/<function>` (a function `(event jsonb) returns jsonb` that Auth's role may execute), `https://…`, or `http://` to localhost.",
    },
    OptionDoc {
        key: "auth.hook.before_user_created.secrets",
        kind: Kind::String,
        default: "\"\"",
        doc: "Standard Webhooks secrets of an HTTP before user created hook, `v1,whsec_<base64>`, several separated by `|`; requests are signed with each (`webhook-signature`). Never logged.",
    },
    OptionDoc {
        key: "auth.hook.password_verification_attempt.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Turn on the password verification attempt hook: told of every password sign-in of a known user (`{user_id, valid}`); `{decision: \"reject\", message, should_logout_user}` refuses it (GoTrue's `GOTRUE_HOOK_PASSWORD_VERIFICATION_ATTEMPT_ENABLED`). See docs/auth.md#auth-hooks.",
    },
    OptionDoc {
        key: "auth.hook.password_verification_attempt.uri",
        kind: Kind::String,
        default: "\"\"",
        doc: "Where the password verification attempt hook goes: `pg-functions://postgres/<schema>/<function>` (a function `(event jsonb) returns jsonb` that Auth's role may execute), `https://…`, or `http://` to localhost.",
    },
    OptionDoc {
        key: "auth.hook.password_verification_attempt.secrets",
        kind: Kind::String,
        default: "\"\"",
        doc: "Standard Webhooks secrets of an HTTP password verification attempt hook, `v1,whsec_<base64>`, several separated by `|`; requests are signed with each (`webhook-signature`). Never logged.",
    },
    OptionDoc {
        key: "auth.hook.mfa_verification_attempt.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Turn on the MFA verification attempt hook: told of every MFA code check (`{user_id, factor_id, factor_type, valid}`); `{decision: \"reject\", message}` refuses it and signs the user out (GoTrue's `GOTRUE_HOOK_MFA_VERIFICATION_ATTEMPT_ENABLED`). See docs/auth.md#auth-hooks.",
    },
    OptionDoc {
        key: "auth.hook.mfa_verification_attempt.uri",
        kind: Kind::String,
        default: "\"\"",
        doc: "Where the mfa verification attempt hook goes: `pg-functions://postgres/<schema>/<function>` (a function `(event jsonb) returns jsonb` that Auth's role may execute), `https://…`, or `http://` to localhost.",
    },
    OptionDoc {
        key: "auth.hook.mfa_verification_attempt.secrets",
        kind: Kind::String,
        default: "\"\"",
        doc: "Standard Webhooks secrets of an HTTP mfa verification attempt hook, `v1,whsec_<base64>`, several separated by `|`; requests are signed with each (`webhook-signature`). Never logged.",
    },
    OptionDoc {
        key: "auth.hook.send_email.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Turn on the send-email hook: gets every mail's data (`{user, email_data}`) instead of the SMTP server or mailbox (GoTrue's `GOTRUE_HOOK_SEND_EMAIL_ENABLED`). See docs/auth.md#auth-hooks.",
    },
    OptionDoc {
        key: "auth.hook.send_email.uri",
        kind: Kind::String,
        default: "\"\"",
        doc: "Where the send email hook goes: `pg-functions://postgres/<schema>/<function>` (a function `(event jsonb) returns jsonb` that Auth's role may execute), `https://…`, or `http://` to localhost.",
    },
    OptionDoc {
        key: "auth.hook.send_email.secrets",
        kind: Kind::String,
        default: "\"\"",
        doc: "Standard Webhooks secrets of an HTTP send email hook, `v1,whsec_<base64>`, several separated by `|`; requests are signed with each (`webhook-signature`). Never logged.",
    },
    OptionDoc {
        key: "auth.hook.send_sms.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Turn on the send-SMS hook: gets every text message's code (`{user, sms}`) instead of the mailbox (GoTrue's `GOTRUE_HOOK_SEND_SMS_ENABLED`). See docs/auth.md#auth-hooks.",
    },
    OptionDoc {
        key: "auth.hook.send_sms.uri",
        kind: Kind::String,
        default: "\"\"",
        doc: "Where the send sms hook goes: `pg-functions://postgres/<schema>/<function>` (a function `(event jsonb) returns jsonb` that Auth's role may execute), `https://…`, or `http://` to localhost.",
    },
    OptionDoc {
        key: "auth.hook.send_sms.secrets",
        kind: Kind::String,
        default: "\"\"",
        doc: "Standard Webhooks secrets of an HTTP send sms hook, `v1,whsec_<base64>`, several separated by `|`; requests are signed with each (`webhook-signature`). Never logged.",
    },
    OptionDoc {
        key: "auth.hook.pg_timeout_ms",
        kind: Kind::Integer,
        default: "2000",
        doc: "`statement_timeout` of a PostgreSQL hook, in milliseconds (GoTrue's 2 s); a hook that runs longer fails the request with 500 (1–60000).",
    },
    OptionDoc {
        key: "auth.hook.http_timeout_ms",
        kind: Kind::Integer,
        default: "5000",
        doc: "Time an HTTP hook may take, retries included, in milliseconds (GoTrue's 5 s); past it the request fails with 422 `hook_timeout` (1–60000).",
    },
    OptionDoc {
        key: "auth.external.google.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Accept Google ID tokens (`signInWithIdToken({provider: 'google'})`, issuer `https://accounts.google.com`), GoTrue's `GOTRUE_EXTERNAL_GOOGLE_ENABLED`. `GET /auth/v1/settings` then reports `external.google: true`. The redirect flow (`signInWithOAuth`) is not offered yet.",
    },
    OptionDoc {
        key: "auth.external.google.client_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "Google OAuth client ids (comma-separated: web, iOS, Android); an ID token's `aud` must be one of them.",
    },
    OptionDoc {
        key: "auth.external.google.secret",
        kind: Kind::String,
        default: "\"\"",
        doc: "Google client secret. With it, `signInWithOAuth({provider: 'google'})` works too: `/auth/v1/authorize` sends the browser to Google and `/auth/v1/callback` (register `<public_url>/auth/v1/callback` with Google) finishes the sign-in. Never logged.",
    },
    OptionDoc {
        key: "auth.external.google.skip_nonce_check",
        kind: Kind::Bool,
        default: "false",
        doc: "Accept Google ID tokens without checking the nonce (GoTrue's option, for native SDKs that cannot set one).",
    },
    OptionDoc {
        key: "auth.external.github.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Sign in with GitHub (`signInWithOAuth({provider: 'github'})`), GoTrue's `GOTRUE_EXTERNAL_GITHUB_ENABLED`: an OAuth app's client id and secret; register `<public_url>/auth/v1/callback` as its callback URL. The user comes from `/user` and `/user/emails` (the primary verified address).",
    },
    OptionDoc {
        key: "auth.external.github.client_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "The GitHub OAuth app's client id.",
    },
    OptionDoc {
        key: "auth.external.github.secret",
        kind: Kind::String,
        default: "\"\"",
        doc: "The GitHub OAuth app's client secret. Never logged.",
    },
    OptionDoc {
        key: "auth.external.github.url",
        kind: Kind::String,
        default: "\"https://github.com\"",
        doc: "Where GitHub's authorize and token endpoints are (GitHub Enterprise: your server).",
    },
    OptionDoc {
        key: "auth.external.github.api_url",
        kind: Kind::String,
        default: "\"https://api.github.com\"",
        doc: "Where GitHub's REST API is (GitHub Enterprise: `https://<host>/api/v3`).",
    },
    OptionDoc {
        key: "auth.external.keycloak.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Accept ID tokens of an OpenID Connect issuer (`signInWithIdToken({provider: 'keycloak'})`: Keycloak, or any provider with discovery), GoTrue's `GOTRUE_EXTERNAL_KEYCLOAK_ENABLED`.",
    },
    OptionDoc {
        key: "auth.external.keycloak.client_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "Client ids (comma-separated) an ID token's `aud` must name one of.",
    },
    OptionDoc {
        key: "auth.external.keycloak.url",
        kind: Kind::String,
        default: "\"\"",
        doc: "The issuer (for Keycloak `https://host/realms/<realm>`): its `/.well-known/openid-configuration` names the key set, and ID tokens' `iss` must equal it. https, or http to a loopback host.",
    },
    OptionDoc {
        key: "auth.external.keycloak.secret",
        kind: Kind::String,
        default: "\"\"",
        doc: "The issuer's client secret (client_secret_basic). With it, `signInWithOAuth({provider: 'keycloak'})` signs users in through the issuer's pages (authorization code with PKCE, nonce, signed state); register `<public_url>/auth/v1/callback` as the redirect URI. The first `client_id` is the one used. Never logged.",
    },
    OptionDoc {
        key: "auth.external.keycloak.skip_nonce_check",
        kind: Kind::Bool,
        default: "false",
        doc: "Accept the issuer's ID tokens without checking the nonce.",
    },
    OptionDoc {
        key: "auth.external.gitlab.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Sign in with GitLab (`signInWithOAuth({provider: 'gitlab'})`), GoTrue's `GOTRUE_EXTERNAL_GITLAB_ENABLED`: an OAuth application with the `read_user` scope; register `<public_url>/auth/v1/callback` as its redirect URI. The user comes from `/api/v4/user` (its email verified when GitLab reports it confirmed).",
    },
    OptionDoc {
        key: "auth.external.gitlab.client_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "The GitLab application's id.",
    },
    OptionDoc {
        key: "auth.external.gitlab.secret",
        kind: Kind::String,
        default: "\"\"",
        doc: "The GitLab application's secret. Never logged.",
    },
    OptionDoc {
        key: "auth.external.gitlab.url",
        kind: Kind::String,
        default: "\"\"",
        doc: "A self-hosted GitLab's base URL (`https://gitlab.example.com`); empty: `https://gitlab.com`. https, or http to a loopback host.",
    },
    OptionDoc {
        key: "auth.external.discord.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Sign in with Discord (`signInWithOAuth({provider: 'discord'})`), GoTrue's `GOTRUE_EXTERNAL_DISCORD_ENABLED`: an application's OAuth2 client with the `identify email` scopes; register `<public_url>/auth/v1/callback` as a redirect. The user comes from `/users/@me` (Discord's `verified` flag decides whether the email is verified).",
    },
    OptionDoc {
        key: "auth.external.discord.client_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "The Discord application's client id.",
    },
    OptionDoc {
        key: "auth.external.discord.secret",
        kind: Kind::String,
        default: "\"\"",
        doc: "The Discord application's client secret. Never logged.",
    },
    OptionDoc {
        key: "auth.external.discord.url",
        kind: Kind::String,
        default: "\"\"",
        doc: "Where Discord is; empty: `https://discord.com` (its API under `/api`). For tests and proxies; https, or http to a loopback host.",
    },
    OptionDoc {
        key: "auth.external.apple.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Sign in with Apple, GoTrue's `GOTRUE_EXTERNAL_APPLE_ENABLED`: `signInWithOAuth({provider: 'apple'})` (Apple answers with `response_mode=form_post`: register `<public_url>/auth/v1/callback` as the return URL) and `signInWithIdToken({provider: 'apple'})` (ID tokens verified against Apple's JWKS). The client secret is an ES256 JWT Sovra signs for each code exchange with `private_key`, `key_id` and `team_id`.",
    },
    OptionDoc {
        key: "auth.external.apple.client_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "The Services ID first (the web flow's client id), then any app bundle ids (comma-separated) whose native ID tokens are accepted.",
    },
    OptionDoc {
        key: "auth.external.apple.team_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "The Apple developer team id (the client secret JWT's `iss`).",
    },
    OptionDoc {
        key: "auth.external.apple.key_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "The id of the Sign in with Apple key (the client secret JWT's `kid`).",
    },
    OptionDoc {
        key: "auth.external.apple.private_key",
        kind: Kind::String,
        default: "\"\"",
        doc: "That key's PEM (the `.p8` file's text, `-----BEGIN PRIVATE KEY-----`). Needed for `signInWithOAuth`; `signInWithIdToken` works without it. Never logged.",
    },
    OptionDoc {
        key: "auth.external.apple.url",
        kind: Kind::String,
        default: "\"\"",
        doc: "Apple's issuer; empty: `https://appleid.apple.com` (discovery, JWKS, and the client secret's `aud`). For tests; https, or http to a loopback host.",
    },
    OptionDoc {
        key: "auth.external.apple.skip_nonce_check",
        kind: Kind::Bool,
        default: "false",
        doc: "Accept Apple ID tokens without checking the nonce.",
    },
    OptionDoc {
        key: "auth.external.azure.enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Sign in with Microsoft (Azure AD / Entra ID), GoTrue's `GOTRUE_EXTERNAL_AZURE_ENABLED`: `signInWithOAuth({provider: 'azure'})` and `signInWithIdToken({provider: 'azure'})`. With a multi-tenant `url` (`common`, `organizations`, `consumers`) each token's `iss` must be `…/{tid}/v2.0` for its own `tid` claim, as Microsoft documents; with a tenant's own URL, exactly that issuer.",
    },
    OptionDoc {
        key: "auth.external.azure.client_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "The application (client) ids, comma-separated; an ID token's `aud` must be one of them, and the first is used for `signInWithOAuth`.",
    },
    OptionDoc {
        key: "auth.external.azure.secret",
        kind: Kind::String,
        default: "\"\"",
        doc: "The application's client secret (for `signInWithOAuth`). Never logged.",
    },
    OptionDoc {
        key: "auth.external.azure.url",
        kind: Kind::String,
        default: "\"\"",
        doc: "The authority: empty means `https://login.microsoftonline.com/common/v2.0` (any work, school or personal account); a single tenant is `https://login.microsoftonline.com/<tenant id>/v2.0`. Its `/.well-known/openid-configuration` names the endpoints and keys.",
    },
    OptionDoc {
        key: "auth.external.azure.skip_nonce_check",
        kind: Kind::Bool,
        default: "false",
        doc: "Accept Microsoft ID tokens without checking the nonce.",
    },
    OptionDoc {
        key: "auth.oauth_server.consent_url",
        kind: Kind::String,
        default: "\"\"",
        doc: "The app's consent page for Sovra as an OAuth 2.1 / OpenID Connect provider (GoTrue's `GOTRUE_OAUTH_SERVER_AUTHORIZATION_PATH`): `/auth/v1/oauth/authorize` sends the browser there with `?authorization_id=`, and the page approves or denies with supabase-js `auth.oauth.approveAuthorization`/`denyAuthorization`. An `http(s)://` URL, or a path under `auth.site_url`; empty: `<site_url>/oauth/consent`.",
    },
    OptionDoc {
        key: "auth.oauth_server.dynamic_registration",
        kind: Kind::Bool,
        default: "false",
        doc: "Let anyone register OAuth clients with `POST /auth/v1/oauth/clients/register` (RFC 7591 dynamic client registration, as MCP clients use it); off: GoTrue's 403 `oauth_dynamic_client_registration_disabled`, and clients are made with the admin API only.",
    },
    OptionDoc {
        key: "auth.manual_linking_enabled",
        kind: Kind::Bool,
        default: "false",
        doc: "Let signed-in users link another provider's identity (`linkIdentity`: `GET /auth/v1/user/identities/authorize` through the provider's redirect flow) and unlink one (`unlinkIdentity`: `DELETE /auth/v1/user/identities/{id}`, never the last), GoTrue's `GOTRUE_SECURITY_MANUAL_LINKING_ENABLED`. Off: both answer 404 `manual_linking_disabled`.",
    },
    OptionDoc {
        key: "auth.webauthn.passkeys",
        kind: Kind::Bool,
        default: "true",
        doc: "Passkey sign-in (`signInWithPasskey`, `registerPasskey`, `auth.passkey.*`, `auth.admin.passkey.*`): the `/passkeys` endpoints. Off: they answer 422 `passkey_disabled`. `GET /auth/v1/settings` reports it as `passkeys_enabled`. See docs/auth.md#passkeys-and-webauthn.",
    },
    OptionDoc {
        key: "auth.webauthn.mfa",
        kind: Kind::Bool,
        default: "true",
        doc: "WebAuthn MFA factors (`factor_type: \"webauthn\"`, `mfa.webauthn.*`). Off: enroll answers 422 `mfa_webauthn_enroll_not_enabled`, challenge and verify `mfa_webauthn_verify_not_enabled`.",
    },
    OptionDoc {
        key: "auth.webauthn.rp_id",
        kind: Kind::String,
        default: "\"\"",
        doc: "The WebAuthn relying party ID: a domain (no scheme, port or path) that every origin in `auth.webauthn.rp_origins` is or is under. Empty: the host of `auth.site_url`. Changing it makes every registered passkey and WebAuthn factor unusable.",
    },
    OptionDoc {
        key: "auth.webauthn.rp_origins",
        kind: Kind::String,
        default: "\"\"",
        doc: "Origins (comma-separated `https://host[:port]`; `http://` only for localhost and loopback addresses) whose WebAuthn ceremonies are accepted. Empty: the origin of `auth.site_url`.",
    },
    OptionDoc {
        key: "auth.webauthn.rp_display_name",
        kind: Kind::String,
        default: "\"Sovra\"",
        doc: "The relying party's name that authenticators show.",
    },
    OptionDoc {
        key: "auth.webauthn.challenge_expiry",
        kind: Kind::Integer,
        default: "300",
        doc: "Seconds a WebAuthn challenge (passkey registration or sign-in, WebAuthn MFA) stays usable (10–3600). Every challenge is used once.",
    },
    OptionDoc {
        key: "auth.webauthn.max_passkeys",
        kind: Kind::Integer,
        default: "10",
        doc: "Most passkeys per user (1–100); more answer 422 `too_many_passkeys`.",
    },
    OptionDoc {
        key: "storage.backend",
        kind: Kind::String,
        default: "\"fs\"",
        doc: "Where stored files go: `fs` (a directory on the local disk) or `s3` (an S3-compatible object store, set up with `storage.s3.*`).",
    },
    OptionDoc {
        key: "storage.path",
        kind: Kind::String,
        default: "",
        doc: "Directory of the `fs` backend. Defaults to `<data_dir>/storage`.",
    },
    OptionDoc {
        key: "storage.file_size_limit",
        kind: Kind::Integer,
        default: "52428800",
        doc: "Largest object accepted, in bytes, whatever a bucket allows (a bucket's `file_size_limit` can only lower it).",
    },
    OptionDoc {
        key: "storage.upload_expiry",
        kind: Kind::Integer,
        default: "86400",
        doc: "Seconds a resumable (TUS) upload may stay unfinished before it and its chunks are deleted.",
    },
    OptionDoc {
        key: "storage.io_threads",
        kind: Kind::Integer,
        default: "16",
        doc: "Most blocking file calls (open, read or write of one chunk, sync) of the `fs` backend running at once; the rest wait, without holding a thread, and get 503 after `storage.io_wait`. Clients never hold one while the server waits for them. 1 to 256.",
    },
    OptionDoc {
        key: "storage.io_wait",
        kind: Kind::Integer,
        default: "30",
        doc: "Seconds a request waits for a free file IO slot of the `fs` backend (`storage.io_threads`) before it is answered 503 `SlowDown` (the disk, not a client, is then the bottleneck). 1 to 3600.",
    },
    OptionDoc {
        key: "storage.image.enabled",
        kind: Kind::Bool,
        default: "true",
        doc: "Serve image transformations (`/storage/v1/render/image/…`: resize, quality, WebP) as Supabase Storage does. Off: those routes answer `FeatureNotEnabled` and signed URLs ignore `transform`.",
    },
    OptionDoc {
        key: "storage.image.max_dimension",
        kind: Kind::Integer,
        default: "2500",
        doc: "Largest `width` or `height` a transformation may ask for; larger values are clamped to it, as Supabase Storage clamps them. 1 to 10000.",
    },
    OptionDoc {
        key: "storage.image.max_pixels",
        kind: Kind::Integer,
        default: "25000000",
        doc: "Most pixels (width × height, as the file's header declares them) of an image that may be transformed; larger ones are refused before decoding (a decoded pixel takes 4 to 8 bytes of memory). 1 to 200000000.",
    },
    OptionDoc {
        key: "storage.image.max_source_size",
        kind: Kind::Integer,
        default: "26214400",
        doc: "Largest object, in bytes, that may be transformed (Supabase: 25 MB). It is read into memory to decode it. 1 to 1073741824.",
    },
    OptionDoc {
        key: "storage.image.concurrency",
        kind: Kind::Integer,
        default: "2",
        doc: "Image transformations running at once, each on a blocking thread of its own; the rest wait (at most `storage.io_wait`, then 503 `SlowDown`). Memory for transformations is about this times `storage.image.max_pixels` × 8 bytes at worst. 1 to 64.",
    },
    OptionDoc {
        key: "storage.image.cache_size",
        kind: Kind::Integer,
        default: "536870912",
        doc: "Bytes of transformed images kept on disk under `<data_dir>/cache/images` (shared by all tenants); the least recently used go first. 0 turns the cache off.",
    },
    OptionDoc {
        key: "storage.s3.endpoint",
        kind: Kind::String,
        default: "",
        doc: "Endpoint URL of an S3-compatible store (MinIO, Ceph, R2, …). Unset: AWS S3 for the region.",
    },
    OptionDoc {
        key: "storage.s3.region",
        kind: Kind::String,
        default: "\"us-east-1\"",
        doc: "Region of the S3 bucket.",
    },
    OptionDoc {
        key: "storage.s3.bucket",
        kind: Kind::String,
        default: "",
        doc: "Name of the S3 bucket that holds every stored file (required with `storage.backend = \"s3\"`).",
    },
    OptionDoc {
        key: "storage.s3.access_key_id",
        kind: Kind::String,
        default: "",
        doc: "S3 access key id. Unset: taken from the usual AWS environment variables or instance metadata.",
    },
    OptionDoc {
        key: "storage.s3.secret_access_key",
        kind: Kind::String,
        default: "",
        doc: "S3 secret access key.",
    },
    OptionDoc {
        key: "storage.s3.force_path_style",
        kind: Kind::Bool,
        default: "false",
        doc: "Address the bucket in the path (`endpoint/bucket/key`) instead of the host name; most self-hosted stores need this.",
    },
    OptionDoc {
        key: "storage.s3_protocol.enabled",
        kind: Kind::Bool,
        default: "true",
        doc: "Serve the S3 protocol at `/storage/v1/s3` (SigV4, as Supabase Storage), so S3 tools reach the buckets: with an S3 access key (`sovra s3-keys`, full access) or a session token (a user's JWT, under RLS). Off: every request there is refused with `AccessDenied`.",
    },
    OptionDoc {
        key: "storage.s3_protocol.region",
        kind: Kind::String,
        default: "\"local\"",
        doc: "The region S3 clients sign `/storage/v1/s3` requests for (Supabase's local development uses `local`); requests signed for another are refused. Lowercase letters, digits and `-`, at most 64.",
    },
    OptionDoc {
        key: "realtime.max_connections",
        kind: Kind::Integer,
        default: "100000",
        doc: "Concurrent WebSocket connections per server; more are refused with 429 `Too many connected users`.",
    },
    OptionDoc {
        key: "realtime.max_channels_per_connection",
        kind: Kind::Integer,
        default: "100",
        doc: "Channels one connection may join; more are refused with `ChannelRateLimitReached`.",
    },
    OptionDoc {
        key: "realtime.max_events_per_second",
        kind: Kind::Integer,
        default: "1000",
        doc: "Messages per second one connection may send (heartbeats excluded); past it the connection is closed with a reason.",
    },
    OptionDoc {
        key: "realtime.max_frame_size",
        kind: Kind::Integer,
        default: "3000000",
        doc: "Largest WebSocket frame accepted, in bytes; a larger one closes the connection (1009).",
    },
    OptionDoc {
        key: "realtime.outbound_queue_bytes",
        kind: Kind::Integer,
        default: "8388608",
        doc: "Bytes queued for one connection (each message counts its size plus 64). A message that would pass it disconnects the client (close 1008, `slow consumer: …`); a message always fits an empty queue. At least 65536.",
    },
    OptionDoc {
        key: "realtime.slow_consumer_timeout",
        kind: Kind::Integer,
        default: "10",
        doc: "Seconds the change feed waits, each time a subscriber's queue is too full for its next change, for that subscriber to drain it to half; one that has not is disconnected (`slow consumer: …`). Bounds how long a client that stops reading holds database changes back for everyone; a subscriber must drain at least half of `outbound_queue_bytes` per this many seconds while it is backed up.",
    },
    OptionDoc {
        key: "realtime.max_bindings_per_channel",
        kind: Kind::Integer,
        default: "100",
        doc: "`postgres_changes` bindings one channel join may carry; a join with more is refused (`phx_reply` error `TooManyBindings: …`).",
    },
    OptionDoc {
        key: "realtime.max_presence_bytes",
        kind: Kind::Integer,
        default: "10000",
        doc: "Largest presence state one channel may track, in bytes of JSON; a larger `track` is refused (`phx_reply` error `PresencePayloadTooLarge: …`).",
    },
    OptionDoc {
        key: "realtime.revalidate_interval",
        kind: Kind::Integer,
        default: "5",
        doc: "Seconds between re-checks of the credentials behind open sockets and channels (the session of a user's token, a Sovra API key): a signed-out or banned user's or a revoked key's socket is closed (close 1008, or the channel with a `system` error) within about this long. One query per interval per server, whatever the number of sockets.",
    },
    OptionDoc {
        key: "realtime.idle_timeout",
        kind: Kind::Integer,
        default: "60",
        doc: "Seconds without any frame (clients send a heartbeat every 25 s) before a connection is closed.",
    },
    OptionDoc {
        key: "realtime.max_slot_lag",
        kind: Kind::Integer,
        default: "1073741824",
        doc: "Bytes of WAL the change feed's replication slot may fall behind; past it the feed skips to the present and tells subscribers (`system` error), so the slot never holds the disk hostage.",
    },
    OptionDoc {
        key: "realtime.catchup_window",
        kind: Kind::Integer,
        default: "300",
        doc: "Seconds of database changes each instance keeps in memory, so that a client rejoining with `since` (a `commit_timestamp` it saw) catches up on what it missed; 0 turns catch-up off.",
    },
    OptionDoc {
        key: "realtime.catchup_max_changes",
        kind: Kind::Integer,
        default: "100000",
        doc: "Most changes kept for catch-up, whatever their age.",
    },
    OptionDoc {
        key: "realtime.catchup_max_bytes",
        kind: Kind::Integer,
        default: "67108864",
        doc: "Most bytes of changes (their column values plus a fixed overhead each) kept for catch-up, whatever their age; the oldest go first. At least 65536.",
    },
    OptionDoc {
        key: "realtime.feed_batch_bytes",
        kind: Kind::Integer,
        default: "8388608",
        doc: "Bytes of changes (their column values plus a fixed overhead each) the change feed holds at once: a transaction of any size is read from the slot, authorised and delivered in batches of at most this much (and at most 20,000 changes), so memory does not grow with transaction size. At least 65536.",
    },
    OptionDoc {
        key: "realtime.nats_url",
        kind: Kind::String,
        default: "",
        doc: "NATS server (`nats://host:4222`; credentials as `nats://user:password@host:4222` or a token as `nats://token@host:4222`, never logged) joining several Sovra instances: broadcast, presence and database changes then reach clients on every instance. Empty: one instance, fan-out in process.",
    },
    OptionDoc {
        key: "realtime.nats_subject",
        kind: Kind::String,
        default: "\"sovra.realtime\"",
        doc: "NATS subject prefix (the tenant id is appended); instances of different deployments sharing one NATS server need different prefixes.",
    },
    OptionDoc {
        key: "mcp.enabled",
        kind: Kind::Bool,
        default: "true",
        doc: "Serve the Model Context Protocol endpoint `/mcp` (see `docs/mcp.md`): AI agents call tools that run as the caller under row-level security. When false, `/mcp` answers 404.",
    },
    OptionDoc {
        key: "mcp.allow_writes",
        kind: Kind::Bool,
        default: "false",
        doc: "Offer the `insert`, `update` and `delete` tools, and call functions through `rpc` in read-write transactions. When false those tools are not listed and `rpc` runs functions read-only. A tenant's `mcp_allow_writes` setting overrides it.",
    },
    OptionDoc {
        key: "mcp.max_request_bytes",
        kind: Kind::Integer,
        default: "1048576",
        doc: "The largest JSON-RPC message `/mcp` accepts, in bytes; larger ones get 413 with a JSON-RPC error. From 1024 to 67108864.",
    },
    OptionDoc {
        key: "mcp.requests_per_minute",
        kind: Kind::Integer,
        default: "600",
        doc: "Messages one caller (a user, an API key, or the anon or service role) may send to `/mcp` per minute, as a token bucket with that burst; more get 429 with `Retry-After`. 0: no limit.",
    },
    OptionDoc {
        key: "mcp.read_object_max_bytes",
        kind: Kind::Integer,
        default: "262144",
        doc: "The largest object the `read_object` tool returns, in bytes; larger objects are refused as a tool error. From 1 to 16777216.",
    },
    OptionDoc {
        key: "mcp.allowed_origins",
        kind: Kind::String,
        default: "",
        doc: "Comma-separated origins (`https://app.example`) of browser pages that may call `/mcp`, besides the server's own `server.public_url`; `*` allows any. Requests with any other `Origin` header get 403 (a defence against DNS rebinding); requests without one (every non-browser client) are not concerned.",
    },
    OptionDoc {
        key: "mcp.session_idle_timeout",
        kind: Kind::Integer,
        default: "3600",
        doc: "Seconds an MCP session (`Mcp-Session-Id`) lives without a message; afterwards it answers 404 and the client initialises again. At least 1.",
    },
    OptionDoc {
        key: "net.allow_private",
        kind: Kind::Bool,
        default: "false",
        doc: "Let HTTP requests from SQL (`net.http_*`, database webhooks, the outbox's HTTP destinations) reach private, loopback, link-local, CGNAT, multicast and other non-public addresses. Off: such a request is refused after DNS resolution and its `net._http_response.error_msg` says why.",
    },
    OptionDoc {
        key: "net.allow_list",
        kind: Kind::String,
        default: "",
        doc: "Comma-separated host names (matched exactly against the URL's host), addresses and CIDR networks (`10.1.0.0/16`) that HTTP requests from SQL may reach even though they are not public.",
    },
    OptionDoc {
        key: "net.concurrency",
        kind: Kind::Integer,
        default: "64",
        doc: "HTTP requests from SQL in flight at once, per tenant (1 to 4096).",
    },
    OptionDoc {
        key: "net.rate_limit",
        kind: Kind::Integer,
        default: "0",
        doc: "HTTP requests from SQL started per second, per tenant (a burst of as many); 0: no limit.",
    },
    OptionDoc {
        key: "net.max_response_size",
        kind: Kind::Integer,
        default: "1048576",
        doc: "Bytes of a response body kept in `net._http_response.content`; a longer body fails the request with an error (not retried). At least 1024.",
    },
    OptionDoc {
        key: "net.max_attempts",
        kind: Kind::Integer,
        default: "5",
        doc: "Attempts of a request that times out, cannot connect, or gets 429 or 5xx (retried with exponential back-off and jitter, honouring `Retry-After`) before it moves to `net.http_request_dead` (1 to 100).",
    },
    OptionDoc {
        key: "net.retry_base",
        kind: Kind::Integer,
        default: "1000",
        doc: "Milliseconds of the first retry's back-off step; each further retry doubles it, up to 5 minutes (at least 10).",
    },
    OptionDoc {
        key: "net.webhook_secret",
        kind: Kind::String,
        default: "",
        doc: "A Standard Webhooks secret (`whsec_<base64>`): when set, every HTTP request from SQL carries `webhook-id`, `webhook-timestamp` and `webhook-signature` headers. Empty: requests are not signed.",
    },
    OptionDoc {
        key: "cron.enabled",
        kind: Kind::Bool,
        default: "true",
        doc: "Runs the jobs of `cron.job` (pg_cron's API) in every tenant database; off, jobs can be scheduled but none runs (another Sovra on the same database may run them).",
    },
    OptionDoc {
        key: "cron.max_running",
        kind: Kind::Integer,
        default: "8",
        doc: "Jobs of one database that may run at the same time (each on a connection of its own); a job due while all are busy runs at the next second. 1 to 100.",
    },
    OptionDoc {
        key: "cron.history_days",
        kind: Kind::Integer,
        default: "7",
        doc: "Days a run stays in `cron.job_run_details` before it is deleted (checked every minute); 0 keeps every run, as pg_cron does.",
    },
];

/// The whole configuration, after defaults, file, environment and flags.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub dashboard: DashboardConfig,
    pub database: DatabaseConfig,
    pub rest: RestConfig,
    pub embedded: EmbeddedConfig,
    pub jwt: JwtConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub realtime: RealtimeConfig,
    pub mcp: McpConfig,
    pub net: NetConfig,
    pub cron: CronConfig,
}

/// The MCP endpoint `/mcp`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct McpConfig {
    pub enabled: bool,
    pub allow_writes: bool,
    pub max_request_bytes: usize,
    pub requests_per_minute: u32,
    pub read_object_max_bytes: usize,
    pub allowed_origins: String,
    pub session_idle_timeout: u64,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            enabled: true,
            allow_writes: false,
            max_request_bytes: 1_048_576,
            requests_per_minute: 600,
            read_object_max_bytes: 262_144,
            allowed_origins: String::new(),
            session_idle_timeout: 3600,
        }
    }
}

impl McpConfig {
    /// `allowed_origins` as a list.
    pub fn origins(&self) -> Vec<String> {
        self.allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1024..=67_108_864).contains(&self.max_request_bytes) {
            return Err(ConfigError::invalid(
                "mcp.max_request_bytes",
                "must be from 1024 to 67108864",
            ));
        }
        if !(1..=16_777_216).contains(&self.read_object_max_bytes) {
            return Err(ConfigError::invalid(
                "mcp.read_object_max_bytes",
                "must be from 1 to 16777216",
            ));
        }
        if self.session_idle_timeout == 0 {
            return Err(ConfigError::invalid(
                "mcp.session_idle_timeout",
                "must be at least 1",
            ));
        }
        for origin in self.origins() {
            let plain = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && origin.split_once("://").is_some_and(|(_, rest)| {
                        !rest.is_empty() && !rest.trim_end_matches('/').contains('/')
                    }));
            if !plain {
                return Err(ConfigError::invalid(
                    "mcp.allowed_origins",
                    format!("{origin:?} is not an origin such as https://app.example (or *)"),
                ));
            }
        }
        Ok(())
    }
}

/// `[net]`: HTTP from SQL, webhooks and the outbox.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    pub allow_private: bool,
    pub allow_list: String,
    pub concurrency: u64,
    pub rate_limit: u64,
    pub max_response_size: u64,
    pub max_attempts: u64,
    pub retry_base: u64,
    pub webhook_secret: String,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            allow_private: false,
            allow_list: String::new(),
            concurrency: 64,
            rate_limit: 0,
            max_response_size: 1 << 20,
            max_attempts: 5,
            retry_base: 1000,
            webhook_secret: String::new(),
        }
    }
}

impl NetConfig {
    /// The entries of `allow_list`, trimmed, empty ones left out.
    pub fn allow_list_entries(&self) -> Vec<&str> {
        self.allow_list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for entry in self.allow_list_entries() {
            let network = entry.split_once('/').map_or(Some(entry), |(ip, len)| {
                len.parse::<u8>()
                    .ok()
                    .filter(|len| *len <= if ip.contains(':') { 128 } else { 32 })?;
                Some(ip)
            });
            let valid = match network {
                Some(ip) if ip.parse::<std::net::IpAddr>().is_ok() => true,
                Some(host) if !entry.contains('/') => {
                    host.len() <= 253
                        && host.split('.').all(|label| {
                            !label.is_empty()
                                && label
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        })
                }
                _ => false,
            };
            if !valid {
                return Err(ConfigError::invalid(
                    "net.allow_list",
                    format!("{entry:?} is neither a host name, an address nor a CIDR network"),
                ));
            }
        }
        if !(1..=4096).contains(&self.concurrency) {
            return Err(ConfigError::invalid("net.concurrency", "must be 1 to 4096"));
        }
        if self.rate_limit > 1_000_000 {
            return Err(ConfigError::invalid(
                "net.rate_limit",
                "must be at most 1000000",
            ));
        }
        if self.max_response_size < 1024 || self.max_response_size > 1 << 30 {
            return Err(ConfigError::invalid(
                "net.max_response_size",
                "must be 1024 to 1073741824 bytes",
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(ConfigError::invalid("net.max_attempts", "must be 1 to 100"));
        }
        if !(10..=300_000).contains(&self.retry_base) {
            return Err(ConfigError::invalid(
                "net.retry_base",
                "must be 10 to 300000 milliseconds",
            ));
        }
        if !self.webhook_secret.is_empty() {
            let key = self.webhook_secret.strip_prefix("whsec_").unwrap_or("");
            let base64 = !key.is_empty()
                && key.len() >= 4
                && key
                    .trim_end_matches('=')
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
            if !base64 {
                return Err(ConfigError::invalid(
                    "net.webhook_secret",
                    "must be whsec_ followed by the key in base64",
                ));
            }
        }
        Ok(())
    }
}

/// The scheduler of `cron.job` (#18).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CronConfig {
    pub enabled: bool,
    pub max_running: u64,
    pub history_days: u64,
}

impl Default for CronConfig {
    fn default() -> Self {
        CronConfig {
            enabled: true,
            max_running: 8,
            history_days: 7,
        }
    }
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RealtimeConfig {
    pub max_connections: u64,
    pub max_channels_per_connection: u64,
    pub max_events_per_second: u64,
    pub max_frame_size: u64,
    pub outbound_queue_bytes: u64,
    pub slow_consumer_timeout: u64,
    pub max_bindings_per_channel: u64,
    pub max_presence_bytes: u64,
    pub revalidate_interval: u64,
    pub idle_timeout: u64,
    pub max_slot_lag: u64,
    pub catchup_window: u64,
    pub catchup_max_changes: u64,
    pub catchup_max_bytes: u64,
    pub feed_batch_bytes: u64,
    pub nats_url: String,
    pub nats_subject: String,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            max_connections: 100_000,
            max_channels_per_connection: 100,
            max_events_per_second: 1000,
            max_frame_size: 3_000_000,
            outbound_queue_bytes: 8 << 20,
            slow_consumer_timeout: 10,
            max_bindings_per_channel: 100,
            max_presence_bytes: 10_000,
            revalidate_interval: 5,
            idle_timeout: 60,
            max_slot_lag: 1 << 30,
            catchup_window: 300,
            catchup_max_changes: 100_000,
            catchup_max_bytes: 64 << 20,
            feed_batch_bytes: 8 << 20,
            nats_url: String::new(),
            nats_subject: "sovra.realtime".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: String,
    pub path: Option<PathBuf>,
    pub file_size_limit: u64,
    pub upload_expiry: u64,
    pub io_threads: u64,
    pub io_wait: u64,
    pub s3: S3Config,
    pub image: ImageConfig,
    pub s3_protocol: S3ProtocolConfig,
}

/// The S3 protocol Sovra serves at `/storage/v1/s3`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3ProtocolConfig {
    pub enabled: bool,
    pub region: String,
}

impl Default for S3ProtocolConfig {
    fn default() -> Self {
        S3ProtocolConfig {
            enabled: true,
            region: "local".to_owned(),
        }
    }
}

/// Image transformations at `/storage/v1/render/image`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    pub enabled: bool,
    pub max_dimension: u64,
    pub max_pixels: u64,
    pub max_source_size: u64,
    pub concurrency: u64,
    pub cache_size: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            enabled: true,
            max_dimension: 2500,
            max_pixels: 25_000_000,
            max_source_size: 26_214_400,
            concurrency: 2,
            cache_size: 536_870_912,
        }
    }
}

#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub force_path_style: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: "fs".to_owned(),
            path: None,
            file_size_limit: 52_428_800,
            upload_expiry: 86_400,
            io_threads: 16,
            io_wait: 30,
            s3: S3Config {
                region: "us-east-1".to_owned(),
                ..S3Config::default()
            },
            s3_protocol: S3ProtocolConfig::default(),
            image: ImageConfig::default(),
        }
    }
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub site_url: Option<String>,
    pub redirect_urls: Option<String>,
    pub jwt_expiry: u64,
    pub disable_signup: bool,
    pub email_autoconfirm: bool,
    pub phone_autoconfirm: bool,
    pub anonymous_users: bool,
    pub password_min_length: u64,
    pub password_requirements: String,
    pub refresh_token_reuse_interval: u64,
    pub session_timebox: u64,
    pub session_inactivity_timeout: u64,
    pub otp_expiry: u64,
    pub email_max_frequency: u64,
    pub secure_password_change: bool,
    pub double_confirm_changes: bool,
    pub invite_only: bool,
    pub mfa_max_factors: u64,
    pub code_attempts: u64,
    pub trusted_proxies: String,
    pub hash_concurrency: u64,
    pub hash_queue: u64,
    pub smtp_url: Option<String>,
    pub smtp_from: String,
    pub templates_dir: Option<PathBuf>,
    pub rate_limit: AuthRateLimits,
    pub hook: AuthHooks,
    pub external: AuthExternal,
    pub oauth_server: AuthOAuthServer,
    pub webauthn: AuthWebAuthn,
    pub manual_linking_enabled: bool,
}

/// `auth.webauthn.*`: passkeys and WebAuthn MFA.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthWebAuthn {
    pub passkeys: bool,
    pub mfa: bool,
    pub rp_id: String,
    pub rp_origins: String,
    pub rp_display_name: String,
    pub challenge_expiry: u64,
    pub max_passkeys: u64,
}

impl Default for AuthWebAuthn {
    fn default() -> Self {
        AuthWebAuthn {
            passkeys: true,
            mfa: true,
            rp_id: String::new(),
            rp_origins: String::new(),
            rp_display_name: "Sovra".to_owned(),
            challenge_expiry: 300,
            max_passkeys: 10,
        }
    }
}

impl AuthWebAuthn {
    /// `rp_origins` as a list.
    pub fn origin_list(&self) -> Vec<String> {
        self.rp_origins
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect()
    }

    /// Checks the options; the error names the option at fault.
    fn check(&self, site_url: Option<&str>) -> Result<(), ConfigError> {
        if !(10..=3600).contains(&self.challenge_expiry) {
            return Err(ConfigError::invalid(
                "auth.webauthn.challenge_expiry",
                "must be between 10 and 3600 seconds",
            ));
        }
        if !(1..=100).contains(&self.max_passkeys) {
            return Err(ConfigError::invalid(
                "auth.webauthn.max_passkeys",
                "must be between 1 and 100",
            ));
        }
        let rp_id = self.rp_id.trim();
        let is_domain = |id: &str| {
            !id.is_empty()
                && id.len() <= 253
                && id.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                })
        };
        if !rp_id.is_empty() && !is_domain(rp_id) {
            return Err(ConfigError::invalid(
                "auth.webauthn.rp_id",
                "must be a lower-case domain name (no scheme, port or path)",
            ));
        }
        let site_host = site_url.and_then(|u| {
            let rest = u.split_once("://")?.1;
            let authority = rest.split(['/', '?', '#']).next()?;
            Some(
                authority
                    .rsplit_once(':')
                    .map_or(authority, |(h, _)| h)
                    .to_owned(),
            )
        });
        let effective = if rp_id.is_empty() {
            site_host
        } else {
            Some(rp_id.to_owned())
        };
        for origin in self.origin_list() {
            let Some((scheme, authority)) = origin.split_once("://") else {
                return Err(ConfigError::invalid(
                    "auth.webauthn.rp_origins",
                    format!("{origin:?} is not an origin (scheme://host[:port])"),
                ));
            };
            let host = authority
                .strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .unwrap_or_else(|| authority.split(':').next().unwrap_or(""));
            let loopback = matches!(host, "localhost" | "127.0.0.1" | "::1");
            if authority.is_empty()
                || authority.contains(['/', '?', '#', '@'])
                || !(scheme == "https" || (scheme == "http" && loopback))
            {
                return Err(ConfigError::invalid(
                    "auth.webauthn.rp_origins",
                    format!("{origin:?} must be https://host[:port] (http:// only for localhost)"),
                ));
            }
            if let Some(id) = &effective
                && !(host == id || host.ends_with(&format!(".{id}")))
            {
                return Err(ConfigError::invalid(
                    "auth.webauthn.rp_origins",
                    format!("{origin:?} is not on the relying party {id:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// `auth.oauth_server.*`: Sovra as an OAuth 2.1 / OpenID Connect provider.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthOAuthServer {
    pub consent_url: String,
    pub dynamic_registration: bool,
}

/// `auth.external.*`: identity providers whose ID tokens are accepted.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthExternal {
    pub google: ExternalProvider,
    pub keycloak: ExternalProvider,
    pub github: GithubOption,
    pub gitlab: OAuthOption,
    pub discord: OAuthOption,
    pub apple: AppleOption,
    pub azure: ExternalProvider,
}

/// `auth.external.gitlab` and `auth.external.discord`: OAuth 2.0
/// providers whose user comes from their API.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthOption {
    pub enabled: bool,
    pub client_id: String,
    pub secret: String,
    /// Empty: the public service.
    pub url: String,
}

impl std::fmt::Debug for OAuthOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthOption")
            .field("enabled", &self.enabled)
            .field("client_id", &self.client_id)
            .field("url", &self.url)
            .field("secret", &redacted(&self.secret))
            .finish()
    }
}

/// `auth.external.apple`.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AppleOption {
    pub enabled: bool,
    pub client_id: String,
    pub team_id: String,
    pub key_id: String,
    pub private_key: String,
    /// Empty: `https://appleid.apple.com`.
    pub url: String,
    pub skip_nonce_check: bool,
}

impl AppleOption {
    /// The Services ID, then bundle ids.
    pub fn client_ids(&self) -> Vec<String> {
        split_list(&self.client_id)
    }
}

impl std::fmt::Debug for AppleOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppleOption")
            .field("enabled", &self.enabled)
            .field("client_id", &self.client_id)
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("url", &self.url)
            .field("skip_nonce_check", &self.skip_nonce_check)
            .field("private_key", &redacted(&self.private_key))
            .finish()
    }
}

fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

/// `auth.external.github`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GithubOption {
    pub enabled: bool,
    pub client_id: String,
    pub secret: String,
    pub url: String,
    pub api_url: String,
}

impl Default for GithubOption {
    fn default() -> Self {
        GithubOption {
            enabled: false,
            client_id: String::new(),
            secret: String::new(),
            url: "https://github.com".to_owned(),
            api_url: "https://api.github.com".to_owned(),
        }
    }
}

impl std::fmt::Debug for GithubOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubOption")
            .field("enabled", &self.enabled)
            .field("client_id", &self.client_id)
            .field("url", &self.url)
            .field("api_url", &self.api_url)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// One provider (GoTrue's `GOTRUE_EXTERNAL_<NAME>_*`).
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalProvider {
    pub enabled: bool,
    pub client_id: String,
    pub url: String,
    pub skip_nonce_check: bool,
    pub secret: String,
}

impl std::fmt::Debug for ExternalProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalProvider")
            .field("enabled", &self.enabled)
            .field("client_id", &self.client_id)
            .field("url", &self.url)
            .field("skip_nonce_check", &self.skip_nonce_check)
            .field(
                "secret",
                &if self.secret.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl AuthExternal {
    /// Checks GitLab, Discord and Apple; the error names the option.
    fn check_oauth_and_apple(&self) -> Result<(), ConfigError> {
        for (name, p) in [("gitlab", &self.gitlab), ("discord", &self.discord)] {
            if !p.enabled {
                continue;
            }
            for (field, value) in [("client_id", &p.client_id), ("secret", &p.secret)] {
                if value.trim().is_empty() {
                    return Err(ConfigError::invalid(
                        &format!("auth.external.{name}.{field}"),
                        "is required when the provider is enabled",
                    ));
                }
            }
            if !p.url.trim().is_empty() && !https_or_loopback(&p.url) {
                return Err(ConfigError::invalid(
                    &format!("auth.external.{name}.url"),
                    "must be an https:// URL (http:// only to a loopback host)",
                ));
            }
        }
        let apple = &self.apple;
        if apple.enabled {
            if apple.client_ids().is_empty() {
                return Err(ConfigError::invalid(
                    "auth.external.apple.client_id",
                    "is required when Apple is enabled",
                ));
            }
            if !apple.url.trim().is_empty() && !https_or_loopback(&apple.url) {
                return Err(ConfigError::invalid(
                    "auth.external.apple.url",
                    "must be an https:// URL (http:// only to a loopback host)",
                ));
            }
            let key = apple.private_key.trim();
            if !key.is_empty() {
                if !(key.starts_with("-----BEGIN PRIVATE KEY-----")
                    && key.ends_with("-----END PRIVATE KEY-----"))
                {
                    return Err(ConfigError::invalid(
                        "auth.external.apple.private_key",
                        "must be the PEM text of the .p8 key (-----BEGIN PRIVATE KEY----- ...)",
                    ));
                }
                for (field, value) in [("team_id", &apple.team_id), ("key_id", &apple.key_id)] {
                    if value.trim().is_empty() {
                        return Err(ConfigError::invalid(
                            &format!("auth.external.apple.{field}"),
                            "is required with private_key",
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl ExternalProvider {
    /// The client ids, as written.
    pub fn client_ids(&self) -> Vec<String> {
        split_list(&self.client_id)
    }
}

/// `auth.hook.*`: GoTrue's extensibility points.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthHooks {
    pub custom_access_token: HookOption,
    pub before_user_created: HookOption,
    pub password_verification_attempt: HookOption,
    pub mfa_verification_attempt: HookOption,
    pub send_email: HookOption,
    pub send_sms: HookOption,
    pub pg_timeout_ms: u64,
    pub http_timeout_ms: u64,
}

impl Default for AuthHooks {
    fn default() -> Self {
        AuthHooks {
            custom_access_token: HookOption::default(),
            before_user_created: HookOption::default(),
            password_verification_attempt: HookOption::default(),
            mfa_verification_attempt: HookOption::default(),
            send_email: HookOption::default(),
            send_sms: HookOption::default(),
            pg_timeout_ms: 2000,
            http_timeout_ms: 5000,
        }
    }
}

impl AuthHooks {
    /// Every hook with its configuration name.
    /// The hook of that name (`custom_access_token`, …), to change.
    pub fn by_name_mut(&mut self, name: &str) -> Option<&mut HookOption> {
        Some(match name {
            "custom_access_token" => &mut self.custom_access_token,
            "before_user_created" => &mut self.before_user_created,
            "password_verification_attempt" => &mut self.password_verification_attempt,
            "mfa_verification_attempt" => &mut self.mfa_verification_attempt,
            "send_email" => &mut self.send_email,
            "send_sms" => &mut self.send_sms,
            _ => return None,
        })
    }

    pub fn all(&self) -> [(&'static str, &HookOption); 6] {
        [
            ("custom_access_token", &self.custom_access_token),
            ("before_user_created", &self.before_user_created),
            (
                "password_verification_attempt",
                &self.password_verification_attempt,
            ),
            ("mfa_verification_attempt", &self.mfa_verification_attempt),
            ("send_email", &self.send_email),
            ("send_sms", &self.send_sms),
        ]
    }
}

/// One hook: on or off, where it goes, and the secrets of an HTTP hook.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HookOption {
    pub enabled: bool,
    pub uri: String,
    pub secrets: String,
}

impl std::fmt::Debug for HookOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookOption")
            .field("enabled", &self.enabled)
            .field("uri", &UrlRedacted(&self.uri))
            .field(
                "secrets",
                &if self.secrets.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

/// An `https://` URL, or `http://` to a loopback host (local providers in
/// development and tests).
fn https_or_loopback(url: &str) -> bool {
    let url = url.trim();
    let loopback = ["http://localhost", "http://127.0.0.1", "http://[::1]"]
        .iter()
        .any(|p| {
            url.strip_prefix(p)
                .is_some_and(|rest| rest.chars().next().is_none_or(|c| c == ':' || c == '/'))
        });
    loopback || (url.starts_with("https://") && url.len() > "https://".len())
}

/// Checks a hook URI as GoTrue does; the message says what is wrong.
fn check_hook(hook: &HookOption) -> Result<(), String> {
    let uri = hook.uri.trim();
    if uri.is_empty() {
        return Err("is enabled but has no `uri`".to_owned());
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "uri {uri:?} is not a URI (pg-functions://…, https://…)"
        ));
    };
    let ident = |name: &str| {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && name.len() <= 63
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match scheme.to_ascii_lowercase().as_str() {
        "pg-functions" => {
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [_, schema, function] | [_, schema, function, ""]
                    if ident(schema) && ident(function) =>
                {
                    Ok(())
                }
                _ => Err(format!(
                    "uri {uri:?} must be pg-functions://<database>/<schema>/<function> with plain identifiers"
                )),
            }
        }
        "https" | "http" => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            if host.contains('@') {
                return Err(format!("uri {uri:?} must not carry credentials"));
            }
            let hostname = if host.starts_with('[') {
                host.split(']')
                    .next()
                    .map(|h| format!("{h}]"))
                    .unwrap_or_default()
            } else {
                host.split(':').next().unwrap_or("").to_owned()
            };
            if hostname.is_empty() {
                return Err(format!("uri {uri:?} has no host"));
            }
            if scheme.eq_ignore_ascii_case("http")
                && !matches!(
                    hostname.as_str(),
                    "localhost" | "127.0.0.1" | "[::1]" | "host.docker.internal"
                )
            {
                return Err("only localhost, 127.0.0.1, and ::1 are supported with http".to_owned());
            }
            let secrets: Vec<&str> = hook
                .secrets
                .split('|')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if secrets.is_empty() {
                return Err(
                    "an HTTP hook needs `secrets` (v1,whsec_<base64>) to sign its requests"
                        .to_owned(),
                );
            }
            for secret in secrets {
                let key = secret.strip_prefix("v1,whsec_").unwrap_or("");
                if !(32..=88).contains(&key.len())
                    || !key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
                {
                    return Err("invalid secret format (expected v1,whsec_<base64>)".to_owned());
                }
            }
            Ok(())
        }
        _ => Err("only postgres hooks and HTTPS functions are supported at the moment".to_owned()),
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthRateLimits {
    pub sign_in: u64,
    pub verify: u64,
    pub token_refresh: u64,
    pub otp: u64,
    pub email_sent: u64,
    pub anonymous: u64,
}

impl Default for AuthRateLimits {
    fn default() -> Self {
        AuthRateLimits {
            sign_in: 30,
            verify: 30,
            token_refresh: 150,
            otp: 30,
            email_sent: 30,
            anonymous: 30,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            site_url: None,
            redirect_urls: None,
            jwt_expiry: 3600,
            disable_signup: false,
            email_autoconfirm: false,
            phone_autoconfirm: false,
            anonymous_users: false,
            password_min_length: 6,
            password_requirements: String::new(),
            refresh_token_reuse_interval: 10,
            session_timebox: 0,
            session_inactivity_timeout: 0,
            otp_expiry: 3600,
            email_max_frequency: 60,
            secure_password_change: false,
            double_confirm_changes: true,
            invite_only: false,
            mfa_max_factors: 10,
            code_attempts: 5,
            trusted_proxies: String::new(),
            hash_concurrency: 0,
            hash_queue: 64,
            smtp_url: None,
            smtp_from: "Sovra <noreply@localhost>".to_owned(),
            templates_dir: None,
            rate_limit: AuthRateLimits::default(),
            hook: AuthHooks::default(),
            external: AuthExternal::default(),
            oauth_server: AuthOAuthServer::default(),
            webauthn: AuthWebAuthn::default(),
            manual_linking_enabled: false,
        }
    }
}

impl AuthConfig {
    /// The trusted proxies, as written (validated by [`Config::validate`]).
    pub fn trusted_proxy_list(&self) -> Vec<String> {
        split_list(&self.trusted_proxies)
    }

    /// The allowed redirect URLs.
    pub fn redirect_url_list(&self) -> Vec<String> {
        self.redirect_urls
            .as_deref()
            .map(split_list)
            .unwrap_or_default()
    }
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn is_cidr(text: &str) -> bool {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let Ok(addr) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RestConfig {
    pub schemas: String,
    pub max_rows: u64,
    pub plan_enabled: bool,
    pub openapi_mode: String,
    pub idempotency_retention: u64,
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            schemas: "public".to_owned(),
            max_rows: 1000,
            plan_enabled: false,
            openapi_mode: "service-role".to_owned(),
            idempotency_retention: 86_400,
        }
    }
}

impl RestConfig {
    /// The exposed schemas, in order.
    pub fn schema_list(&self) -> Vec<String> {
        self.schemas
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub public_url: Option<String>,
    pub base_domain: Option<String>,
    pub body_limit: usize,
    pub shutdown_timeout: u64,
    pub drain_delay: u64,
    pub shared_state: String,
    pub body_idle_timeout: u64,
    pub header_read_timeout: u64,
    pub max_connections_per_client: u64,
    pub require_apikey: bool,
    pub tenant_idle_timeout: u64,
    pub tenant_storage_max_bytes: u64,
    pub tenant_database_max_bytes: u64,
    pub tenant_database_check_interval: u64,
    pub tenant_mails_per_hour: u64,
    pub tenant_realtime_events_per_second: u64,
    pub tenant_max_concurrent_requests: u64,
    pub tenant_shared_requests: u64,
    pub tenant_secrets_key: SecretValue,
    pub tenant_secrets_old_keys: SecretValue,
}

/// What `Debug` shows of a secret option: whether it is set, never its
/// value.
struct Redacted<'a, T>(&'a T);

/// What `Debug` shows of a URL option: the URL with the password of its
/// user information (`scheme://user:password@host`) replaced, for every
/// comma-separated URL in it.
struct UrlRedacted<'a, T>(&'a T);

/// Text options that `Debug` may have to hide: a `String` or an
/// `Option<String>`.
trait OptionText {
    fn text(&self) -> Option<&str>;
}

impl OptionText for String {
    fn text(&self) -> Option<&str> {
        Some(self)
    }
}

impl OptionText for Option<String> {
    fn text(&self) -> Option<&str> {
        self.as_deref()
    }
}

impl<T: OptionText> std::fmt::Debug for Redacted<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.text() {
            None => f.write_str("None"),
            Some("") => f.write_str("\"\""),
            Some(_) => f.write_str("\"***\""),
        }
    }
}

impl<T: OptionText> std::fmt::Debug for UrlRedacted<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.text() {
            None => f.write_str("None"),
            Some(text) => std::fmt::Debug::fmt(&urls_without_passwords(text), f),
        }
    }
}

/// `text` (one URL, or several separated by commas) with the password of
/// every URL's user information replaced. A comma splits only where a new
/// `scheme://` follows it: a password may hold a comma. Connection strings
/// that are not URLs (`host=… password=…`) and URLs with a `password`
/// query parameter are hidden whole.
pub fn urls_without_passwords(text: &str) -> String {
    if text.to_ascii_lowercase().contains("password=") {
        return "***".to_owned();
    }
    let is_scheme = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    };
    let mut parts: Vec<String> = Vec::new();
    let mut start = 0;
    for (at, _) in text.match_indices(',') {
        let next = text[at + 1..].trim_start();
        if next.find("://").is_some_and(|end| is_scheme(&next[..end])) {
            parts.push(url_without_password(&text[start..at]));
            start = at + 1;
        }
    }
    parts.push(url_without_password(&text[start..]));
    parts.join(",")
}

/// Credentials written in a NATS URL's user information.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsCredentials {
    /// `nats://user:password@host`.
    Login { user: String, password: String },
    /// `nats://token@host`.
    Token(String),
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsCredentials::Login { user, .. } => write!(f, "Login({user}, ***)"),
            NatsCredentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// The credentials of `realtime.nats_url` (one URL or a comma-separated
/// list; the first that has a user): async-nats reads servers from a URL
/// but not their credentials, so the realtime bus and the outbox pass these
/// to it. Read as async-nats reads a server address: a URL without a scheme
/// is a `nats://` one, and the text is taken as written (not
/// percent-decoded).
pub fn nats_url_credentials(url: &str) -> Option<NatsCredentials> {
    url.split(',').find_map(|part| {
        let part = part.trim();
        let rest = part.find("://").map_or(part, |end| &part[end + 3..]);
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let userinfo = &authority[..authority.rfind('@')?];
        match userinfo.split_once(':') {
            Some(("", _)) => None,
            Some((user, password)) => Some(NatsCredentials::Login {
                user: user.to_owned(),
                password: password.to_owned(),
            }),
            None if userinfo.is_empty() => None,
            None => Some(NatsCredentials::Token(userinfo.to_owned())),
        }
    })
}

/// `url` with the password of its user information replaced by `***`
/// (PostgreSQL, NATS and SMTP URLs carry credentials there).
fn url_without_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        // NATS takes a token as the whole user information.
        let scheme = url[..scheme_end].to_ascii_lowercase();
        if matches!(scheme.as_str(), "nats" | "tls" | "ws" | "wss") {
            return format!(
                "{}***{}",
                &url[..authority_start],
                &url[authority_start + at..]
            );
        }
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &url[authority_start + at..]
    )
}

/// Implements `Debug` for a configuration section that holds secrets:
/// every field must be named (a new field that is not fails to compile),
/// `secret` ones show only whether they are set, `url` ones without their
/// password.
macro_rules! redacting_debug {
    ($ty:ident { $($plain:ident),* $(,)? } secret { $($secret:ident),* $(,)? } url { $($url:ident),* $(,)? }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let $ty { $($plain,)* $($secret,)* $($url,)* } = self;
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($plain), $plain))*
                    $(.field(stringify!($secret), &Redacted($secret)))*
                    $(.field(stringify!($url), &UrlRedacted($url)))*
                    .finish()
            }
        }
    };
}

redacting_debug!(JwtConfig { audience, jwks_audience, jwks_issuer, issuer } secret { secret, jwks } url {});
redacting_debug!(NetConfig {
    allow_private, allow_list, concurrency, rate_limit, max_response_size, max_attempts, retry_base
} secret { webhook_secret } url {});
redacting_debug!(S3Config { endpoint, region, bucket, access_key_id, force_path_style } secret { secret_access_key } url {});
redacting_debug!(MetricsConfig {} secret { token } url {});
redacting_debug!(DatabaseConfig { pool_size, connect_timeout, read_max_lag, read_wait_ms } secret {} url { url, read_urls });
redacting_debug!(RealtimeConfig {
    max_connections, max_channels_per_connection, max_events_per_second, max_frame_size,
    outbound_queue_bytes, slow_consumer_timeout, max_bindings_per_channel, max_presence_bytes,
    revalidate_interval, idle_timeout, max_slot_lag, catchup_window, catchup_max_changes,
    catchup_max_bytes, feed_batch_bytes, nats_subject
} secret {} url { nats_url });
redacting_debug!(AuthConfig {
    site_url, redirect_urls, jwt_expiry, disable_signup, email_autoconfirm, phone_autoconfirm,
    anonymous_users, password_min_length, password_requirements, refresh_token_reuse_interval,
    session_timebox, session_inactivity_timeout, otp_expiry, email_max_frequency,
    secure_password_change, double_confirm_changes, invite_only, mfa_max_factors, code_attempts,
    trusted_proxies, hash_concurrency, hash_queue, smtp_from, templates_dir, rate_limit, hook,
    external, oauth_server, webauthn, manual_linking_enabled
} secret {} url { smtp_url });

/// The value of a secret option: `Debug` never shows it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct SecretValue(pub String);

impl SecretValue {
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// The comma-separated parts, trimmed, empty ones left out.
    pub fn parts(&self) -> Vec<&str> {
        self.0
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"***\"")
        }
    }
}

/// Whether `text` is a key of 64 hex digits.
fn is_hex_key(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// The dashboard at `/_/`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    pub session_ttl: u64,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig { session_ttl: 3600 }
    }
}

/// Who may read `/metrics`.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub token: Option<String>,
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: Option<String>,
    pub pool_size: usize,
    pub connect_timeout: u64,
    /// Comma-separated read replica URLs (see [`DatabaseConfig::read_url_list`]).
    pub read_urls: String,
    pub read_max_lag: u64,
    pub read_wait_ms: u64,
}

impl DatabaseConfig {
    /// The read replicas of `database.read_urls`, in order, blanks dropped.
    pub fn read_url_list(&self) -> Vec<String> {
        self.read_urls
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    pub bin_dir: Option<PathBuf>,
    pub port: Option<u16>,
    pub system_user: String,
    pub start_timeout: u64,
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    pub secret: Option<String>,
    pub jwks: Option<String>,
    pub audience: Option<String>,
    pub jwks_audience: Option<String>,
    pub jwks_issuer: Option<String>,
    pub issuer: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            server: ServerConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            dashboard: DashboardConfig::default(),
            database: DatabaseConfig::default(),
            rest: RestConfig::default(),
            embedded: EmbeddedConfig::default(),
            jwt: JwtConfig::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            realtime: RealtimeConfig::default(),
            mcp: McpConfig::default(),
            net: NetConfig::default(),
            cron: CronConfig::default(),
        }
    }
}

/// A lowercase DNS name: dot-separated labels of `a-z`, `0-9` and `-`
/// (not at either end of a label), at most 253 characters. Empty is
/// allowed (the option is then off).
fn is_domain_name(name: &str) -> bool {
    name.is_empty()
        || (name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            }))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:54321".to_owned(),
            public_url: None,
            base_domain: None,
            body_limit: 10 * 1024 * 1024,
            shutdown_timeout: 30,
            drain_delay: 0,
            shared_state: "auto".to_owned(),
            body_idle_timeout: 60,
            header_read_timeout: 30,
            max_connections_per_client: 1000,
            require_apikey: false,
            tenant_idle_timeout: 300,
            tenant_storage_max_bytes: 0,
            tenant_database_max_bytes: 0,
            tenant_database_check_interval: 60,
            tenant_mails_per_hour: 0,
            tenant_realtime_events_per_second: 0,
            tenant_max_concurrent_requests: 0,
            tenant_shared_requests: 0,
            tenant_secrets_key: SecretValue::default(),
            tenant_secrets_old_keys: SecretValue::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            pool_size: 16,
            connect_timeout: 10,
            read_urls: String::new(),
            read_max_lag: 5,
            read_wait_ms: 100,
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            bin_dir: None,
            port: None,
            system_user: "postgres".to_owned(),
            start_timeout: 60,
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: None,
            jwks: None,
            audience: None,
            jwks_audience: None,
            jwks_issuer: None,
            issuer: "sovra".to_owned(),
        }
    }
}

/// Builds a [`Config`] from its layers. Flags set with [`Loader::set`] win
/// over the environment, which wins over the file.
#[derive(Default)]
pub struct Loader {
    table: toml::Table,
    overrides: Vec<(String, String, String)>,
    unknown_env: Vec<String>,
    default_data_dir: Option<String>,
}

/// The layers hold option values, secrets included: `Debug` shows which
/// options they set, never a value.
impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sections: Vec<&String> = self.table.keys().collect();
        let overridden: Vec<&String> = self.overrides.iter().map(|(key, _, _)| key).collect();
        f.debug_struct("Loader")
            .field("file_sections", &sections)
            .field("overrides", &overridden)
            .field("unknown_env", &self.unknown_env)
            .finish_non_exhaustive()
    }
}

impl Loader {
    /// Reads the file at `path`. With `explicit` false a missing file is not
    /// an error (the default `sovra.toml` is optional); with `explicit` true
    /// it is.
    pub fn file(path: &Path, explicit: bool) -> Result<Loader, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if !explicit && err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Loader::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Loader::from_toml(&text, path)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Loader, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|err: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_owned(),
                    message: err.message().to_owned(),
                })?;
        Ok(Loader {
            table,
            overrides: Vec::new(),
            unknown_env: Vec::new(),
            default_data_dir: None,
        })
    }

    /// Applies the `SOVRA_*` variables among `vars`. Variables that name no
    /// option are not an error (people export `SOVRA_URL` or
    /// `SOVRA_ANON_KEY` for their own clients in the same shell): they are
    /// collected for [`Loader::env_warnings`], which the binary logs.
    /// Unknown keys in the file and unknown flags are still refused.
    /// `SOVRA_CONFIG` (the file path) and `SOVRA_TEST_*` (the test harness)
    /// are not options and are skipped silently.
    pub fn env<I>(mut self, vars: I) -> Result<Loader, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with("SOVRA_"))
            .collect();
        for (name, value) in vars {
            if name == "SOVRA_CONFIG" || name.starts_with("SOVRA_TEST_") {
                continue;
            }
            match OPTIONS.iter().find(|opt| opt.env_name() == name) {
                Some(option) => self.overrides.push((option.key.to_owned(), name, value)),
                None => self.unknown_env.push(name),
            }
        }
        Ok(self)
    }

    /// The `SOVRA_*` variables given to [`Loader::env`] that name no option,
    /// in name order.
    pub fn unknown_env(&self) -> &[String] {
        &self.unknown_env
    }

    /// One warning per unknown `SOVRA_*` variable, naming the option it
    /// most likely meant when one is close (a typo such as
    /// `SOVRA_SERVER_LISEN`). Never contains the variable's value.
    pub fn env_warnings(&self) -> Vec<String> {
        self.unknown_env
            .iter()
            .map(|name| {
                let closest = OPTIONS
                    .iter()
                    .map(|opt| (edit_distance(name, &opt.env_name()), opt))
                    .filter(|(distance, _)| *distance <= 2)
                    .min_by_key(|(distance, _)| *distance);
                match closest {
                    Some((_, opt)) => format!(
                        "ignoring environment variable {name}: it names no option; did you mean {} (`{}`)?",
                        opt.env_name(),
                        opt.key
                    ),
                    None => format!(
                        "ignoring environment variable {name}: it names no option (see docs/config.md)"
                    ),
                }
            })
            .collect()
    }

    /// Sets one option from a command-line flag (`key` is the dotted path).
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Loader {
        self.overrides
            .push((key.to_owned(), format!("--{key}"), value.into()));
        self
    }

    /// Replaces the built-in default of `data_dir` (used only when neither
    /// the file, the environment nor a flag sets it); the binary passes
    /// [`default_data_dir`] for the user it runs as.
    pub fn default_data_dir(mut self, dir: impl Into<String>) -> Loader {
        self.default_data_dir = Some(dir.into());
        self
    }

    /// Merges the layers, deserialises and validates.
    pub fn load(self) -> Result<Config, ConfigError> {
        let mut table = self.table;
        check_known(&table, "")?;
        if let Some(dir) = self.default_data_dir
            && !table.contains_key("data_dir")
            && !self.overrides.iter().any(|(key, _, _)| key == "data_dir")
        {
            table.insert("data_dir".to_owned(), toml::Value::String(dir));
        }
        for (key, source, value) in self.overrides {
            let option = OPTIONS
                .iter()
                .find(|opt| opt.key == key)
                .ok_or_else(|| ConfigError::Unknown(key.clone()))?;
            let value = parse_scalar(option, &source, &value)?;
            insert_path(&mut table, option.key, value);
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
                let option = err.path().to_string();
                ConfigError::invalid(&option, err.into_inner().message().to_owned())
            })?;
        config.validate()?;
        Ok(config)
    }
}

/// Levenshtein distance over bytes (names are ASCII), for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

fn check_known(table: &toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let is_section = OPTIONS
            .iter()
            .any(|opt| opt.key.starts_with(&format!("{key}.")));
        match value {
            toml::Value::Table(inner) if is_section => check_known(inner, &key)?,
            _ if OPTIONS.iter().any(|opt| opt.key == key) => {}
            _ => return Err(ConfigError::Unknown(key)),
        }
    }
    Ok(())
}

fn parse_scalar(option: &OptionDoc, source: &str, raw: &str) -> Result<toml::Value, ConfigError> {
    let invalid = |what: &str| {
        ConfigError::invalid(option.key, format!("{source} must be {what}, got {raw:?}"))
    };
    match option.kind {
        Kind::String => Ok(toml::Value::String(raw.to_owned())),
        Kind::Integer => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| invalid("an integer")),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err(invalid("true or false")),
        },
    }
}

fn insert_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else {
            return;
        };
        current = next;
    }
    current.insert(last.to_owned(), value);
}

impl Config {
    /// Whether state several nodes must agree on (auth's rate limits)
    /// lives in PostgreSQL: `server.shared_state`, where `auto` follows
    /// `realtime.nats_url` (set: nodes joined into a cluster).
    pub fn shared_state_in_postgres(&self) -> bool {
        match self.server.shared_state.as_str() {
            "postgres" => true,
            "memory" => false,
            _ => !self.realtime.nats_url.is_empty(),
        }
    }

    /// Loads the configuration the way `sovra` does: the file at `path` (or
    /// `sovra.toml` in the working directory when present), then `env`.
    pub fn load<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let loader = match path {
            Some(path) => Loader::file(path, true)?,
            None => Loader::file(Path::new(DEFAULT_FILE), false)?,
        };
        loader.env(env)?.load()
    }

    /// The listen address, already validated.
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 54321)))
    }

    /// True when `/metrics` answers anyone who can reach the listener from
    /// another machine: no `metrics.token` and `server.listen` is not a
    /// loopback address. `sovra serve` warns about it at start.
    pub fn metrics_exposed(&self) -> bool {
        self.metrics.token.is_none() && !self.listen_addr().ip().is_loopback()
    }

    /// `server.base_domain`, when set and not empty.
    pub fn base_domain(&self) -> Option<&str> {
        self.server.base_domain.as_deref().filter(|d| !d.is_empty())
    }

    /// The URL clients reach Sovra at.
    pub fn public_url(&self, bound: SocketAddr) -> String {
        match &self.server.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{bound}"),
        }
    }

    /// Checks what deserialisation cannot: ranges, formats, lengths.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.mcp.validate()?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "server.listen",
                format!(
                    "{:?} is not an address and port such as 127.0.0.1:54321",
                    self.server.listen
                ),
            ));
        }
        if let Some(url) = &self.server.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "server.public_url",
                "must start with http:// or https://",
            ));
        }
        if let Some(domain) = &self.server.base_domain
            && !is_domain_name(domain)
        {
            return Err(ConfigError::invalid(
                "server.base_domain",
                "must be a lowercase domain name such as example.com (no scheme, port or path)",
            ));
        }
        if self.server.body_limit < 1024 {
            return Err(ConfigError::invalid(
                "server.body_limit",
                "must be at least 1024 bytes",
            ));
        }
        if !(1..=86_400).contains(&self.dashboard.session_ttl) {
            return Err(ConfigError::invalid(
                "dashboard.session_ttl",
                "must be 1 to 86400 seconds",
            ));
        }
        if self.server.body_idle_timeout == 0 {
            return Err(ConfigError::invalid(
                "server.body_idle_timeout",
                "must be at least 1 second",
            ));
        }
        if self.server.tenant_idle_timeout == 0 {
            return Err(ConfigError::invalid(
                "server.tenant_idle_timeout",
                "must be at least 1 second",
            ));
        }
        if !self.server.tenant_secrets_key.is_empty()
            && !is_hex_key(self.server.tenant_secrets_key.0.trim())
        {
            return Err(ConfigError::invalid(
                "server.tenant_secrets_key",
                "must be 64 hex digits (32 bytes, e.g. from `openssl rand -hex 32`)",
            ));
        }
        if !self
            .server
            .tenant_secrets_old_keys
            .parts()
            .iter()
            .all(|key| is_hex_key(key))
        {
            return Err(ConfigError::invalid(
                "server.tenant_secrets_old_keys",
                "must be keys of 64 hex digits, separated by commas",
            ));
        }
        if self.server.tenant_database_check_interval == 0 {
            return Err(ConfigError::invalid(
                "server.tenant_database_check_interval",
                "must be at least 1 second",
            ));
        }
        if self.server.header_read_timeout == 0 {
            return Err(ConfigError::invalid(
                "server.header_read_timeout",
                "must be at least 1 second",
            ));
        }
        if !is_log_filter(&self.log.level) {
            return Err(ConfigError::invalid(
                "log.level",
                format!(
                    "{:?} is not a level (error, warn, info, debug, trace) or target=level list",
                    self.log.level
                ),
            ));
        }
        if let Some(token) = &self.metrics.token
            && (token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(ConfigError::invalid(
                "metrics.token",
                "must be at least 16 printable ASCII characters without spaces",
            ));
        }
        if let Some(url) = &self.database.url {
            let looks_like_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
            let looks_like_dsn = url.contains('=');
            if !looks_like_url && !looks_like_dsn {
                return Err(ConfigError::invalid(
                    "database.url",
                    "must be a postgres:// URL or a key=value connection string",
                ));
            }
        }
        if !(1..=10_000).contains(&self.database.pool_size) {
            return Err(ConfigError::invalid(
                "database.pool_size",
                "must be between 1 and 10000",
            ));
        }
        if self.database.connect_timeout == 0 {
            return Err(ConfigError::invalid(
                "database.connect_timeout",
                "must be at least 1 second",
            ));
        }
        for url in self.database.read_url_list() {
            let rest = url
                .strip_prefix("postgres://")
                .or_else(|| url.strip_prefix("postgresql://"));
            // The part naming the server: after any user, before any path.
            let host = rest
                .map(|rest| rest.split(['/', '?']).next().unwrap_or(""))
                .map(|authority| authority.rsplit('@').next().unwrap_or(""));
            if host.is_none_or(|host| host.is_empty() || host.starts_with(':')) {
                return Err(ConfigError::invalid(
                    "database.read_urls",
                    format!(
                        "{url:?} is not a postgres://host:port URL (list replicas separated by commas)"
                    ),
                ));
            }
        }
        if !(1..=3600).contains(&self.database.read_max_lag) {
            return Err(ConfigError::invalid(
                "database.read_max_lag",
                "must be between 1 and 3600 seconds",
            ));
        }
        if self.database.read_wait_ms > 5000 {
            return Err(ConfigError::invalid(
                "database.read_wait_ms",
                "must be between 0 and 5000 milliseconds",
            ));
        }
        if self.rest.schema_list().is_empty() {
            return Err(ConfigError::invalid(
                "rest.schemas",
                "must name at least one schema",
            ));
        }
        if !matches!(
            self.rest.openapi_mode.as_str(),
            "service-role" | "follow-privileges" | "ignore-privileges" | "disabled"
        ) {
            return Err(ConfigError::invalid(
                "rest.openapi_mode",
                "must be service-role, follow-privileges, ignore-privileges or disabled",
            ));
        }
        if !matches!(
            self.server.shared_state.as_str(),
            "auto" | "postgres" | "memory"
        ) {
            return Err(ConfigError::invalid(
                "server.shared_state",
                "must be auto, postgres or memory",
            ));
        }
        if !(1..=2_592_000).contains(&self.rest.idempotency_retention) {
            return Err(ConfigError::invalid(
                "rest.idempotency_retention",
                "must be between 1 and 2592000 seconds (30 days)",
            ));
        }
        if self.embedded.port == Some(0) {
            return Err(ConfigError::invalid("embedded.port", "must be 1 to 65535"));
        }
        if self.embedded.system_user.is_empty() {
            return Err(ConfigError::invalid(
                "embedded.system_user",
                "must name a system user",
            ));
        }
        if self.embedded.start_timeout == 0 {
            return Err(ConfigError::invalid(
                "embedded.start_timeout",
                "must be at least 1 second",
            ));
        }
        if let Some(secret) = &self.jwt.secret
            && secret.len() < 32
        {
            return Err(ConfigError::invalid(
                "jwt.secret",
                "must be at least 32 characters (256 bits)",
            ));
        }
        if let Some(jwks) = &self.jwt.jwks
            && !jwks.starts_with('@')
        {
            let parsed = parse_jwks("jwt.jwks", jwks)?;
            self.check_external_audience(&parsed)?;
        }
        for (option, value) in [
            ("jwt.jwks_audience", &self.jwt.jwks_audience),
            ("jwt.jwks_issuer", &self.jwt.jwks_issuer),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(ConfigError::invalid(option, "must not be empty when set"));
            }
        }
        if self.jwt.issuer.is_empty() {
            return Err(ConfigError::invalid("jwt.issuer", "must not be empty"));
        }
        self.validate_auth()?;
        self.validate_storage()?;
        self.net.validate()?;
        if !(1..=100).contains(&self.cron.max_running) {
            return Err(ConfigError::invalid(
                "cron.max_running",
                "must be between 1 and 100",
            ));
        }
        let realtime = &self.realtime;
        for (option, value) in [
            ("realtime.max_connections", realtime.max_connections),
            (
                "realtime.max_channels_per_connection",
                realtime.max_channels_per_connection,
            ),
            (
                "realtime.max_events_per_second",
                realtime.max_events_per_second,
            ),
            ("realtime.idle_timeout", realtime.idle_timeout),
            (
                "realtime.slow_consumer_timeout",
                realtime.slow_consumer_timeout,
            ),
            (
                "realtime.max_bindings_per_channel",
                realtime.max_bindings_per_channel,
            ),
            ("realtime.max_presence_bytes", realtime.max_presence_bytes),
            ("realtime.revalidate_interval", realtime.revalidate_interval),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(option, "must be at least 1"));
            }
        }
        for (option, value) in [
            (
                "realtime.outbound_queue_bytes",
                realtime.outbound_queue_bytes,
            ),
            ("realtime.catchup_max_bytes", realtime.catchup_max_bytes),
            ("realtime.feed_batch_bytes", realtime.feed_batch_bytes),
        ] {
            if value < 65_536 {
                return Err(ConfigError::invalid(option, "must be at least 65536 bytes"));
            }
        }
        if realtime.max_frame_size < 1024 {
            return Err(ConfigError::invalid(
                "realtime.max_frame_size",
                "must be at least 1024 bytes",
            ));
        }
        if !realtime.nats_url.is_empty()
            && !["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|scheme| realtime.nats_url.starts_with(scheme))
        {
            return Err(ConfigError::invalid(
                "realtime.nats_url",
                "must be a nats:// (or tls://, ws://, wss://) URL",
            ));
        }
        if realtime.nats_subject.is_empty()
            || realtime
                .nats_subject
                .split('.')
                .any(|part| part.is_empty() || part.contains(['*', '>', ' ']))
        {
            return Err(ConfigError::invalid(
                "realtime.nats_subject",
                "must be dot-separated tokens without wildcards or spaces",
            ));
        }
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        let storage = &self.storage;
        match storage.backend.as_str() {
            "fs" => {}
            "s3" => {
                if storage.s3.bucket.as_deref().is_none_or(str::is_empty) {
                    return Err(ConfigError::invalid(
                        "storage.s3.bucket",
                        "is required when storage.backend is s3",
                    ));
                }
            }
            _ => return Err(ConfigError::invalid("storage.backend", "must be fs or s3")),
        }
        if let Some(endpoint) = &storage.s3.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "storage.s3.endpoint",
                "must start with http:// or https://",
            ));
        }
        if storage.file_size_limit == 0 {
            return Err(ConfigError::invalid(
                "storage.file_size_limit",
                "must be at least 1 byte",
            ));
        }
        if storage.upload_expiry < 60 {
            return Err(ConfigError::invalid(
                "storage.upload_expiry",
                "must be at least 60 seconds",
            ));
        }
        if !(1..=256).contains(&storage.io_threads) {
            return Err(ConfigError::invalid(
                "storage.io_threads",
                "must be between 1 and 256",
            ));
        }
        if !(1..=3600).contains(&storage.io_wait) {
            return Err(ConfigError::invalid(
                "storage.io_wait",
                "must be between 1 and 3600 seconds",
            ));
        }
        let region = &storage.s3_protocol.region;
        if region.is_empty()
            || region.len() > 64
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::invalid(
                "storage.s3_protocol.region",
                "must be 1 to 64 lowercase letters, digits and `-`",
            ));
        }
        Self::validate_image(&storage.image)
    }

    fn validate_image(image: &ImageConfig) -> Result<(), ConfigError> {
        let ranges: [(&str, u64, u64, u64); 4] = [
            (
                "storage.image.max_dimension",
                image.max_dimension,
                1,
                10_000,
            ),
            ("storage.image.max_pixels", image.max_pixels, 1, 200_000_000),
            (
                "storage.image.max_source_size",
                image.max_source_size,
                1,
                1 << 30,
            ),
            ("storage.image.concurrency", image.concurrency, 1, 64),
        ];
        for (option, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::invalid(
                    option,
                    format!("must be between {low} and {high}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if let Some(url) = &auth.site_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::invalid(
                "auth.site_url",
                "must start with http:// or https://",
            ));
        }
        if !(60..=604_800).contains(&auth.jwt_expiry) {
            return Err(ConfigError::invalid(
                "auth.jwt_expiry",
                "must be between 60 seconds and one week",
            ));
        }
        if !(1..=72).contains(&auth.password_min_length) {
            return Err(ConfigError::invalid(
                "auth.password_min_length",
                "must be between 1 and 72",
            ));
        }
        if !matches!(
            auth.password_requirements.as_str(),
            "" | "letters_digits"
                | "lower_upper_letters_digits"
                | "lower_upper_letters_digits_symbols"
        ) {
            return Err(ConfigError::invalid(
                "auth.password_requirements",
                "must be empty, letters_digits, lower_upper_letters_digits or lower_upper_letters_digits_symbols",
            ));
        }
        if !(1..=100).contains(&auth.code_attempts) {
            return Err(ConfigError::invalid(
                "auth.code_attempts",
                "must be between 1 and 100",
            ));
        }
        if auth.otp_expiry == 0 {
            return Err(ConfigError::invalid(
                "auth.otp_expiry",
                "must be at least 1 second",
            ));
        }
        if auth.hash_concurrency > 256 {
            return Err(ConfigError::invalid(
                "auth.hash_concurrency",
                "must be at most 256 (each thread keeps 19 MiB)",
            ));
        }
        if auth.hash_queue > 100_000 {
            return Err(ConfigError::invalid(
                "auth.hash_queue",
                "must be at most 100000",
            ));
        }
        if let Some(bad) = auth.trusted_proxy_list().into_iter().find(|p| !is_cidr(p)) {
            return Err(ConfigError::invalid(
                "auth.trusted_proxies",
                format!("{bad:?} is not an address or CIDR block"),
            ));
        }
        if let Some(url) = &auth.smtp_url
            && !(url.starts_with("smtp://") || url.starts_with("smtps://"))
        {
            return Err(ConfigError::invalid(
                "auth.smtp_url",
                "must start with smtp:// or smtps://",
            ));
        }
        for (name, hook) in auth.hook.all() {
            if hook.enabled
                && let Err(message) = check_hook(hook)
            {
                return Err(ConfigError::invalid(&format!("auth.hook.{name}"), message));
            }
        }
        for (name, provider) in [
            ("google", &auth.external.google),
            ("keycloak", &auth.external.keycloak),
            ("azure", &auth.external.azure),
        ] {
            if !provider.enabled {
                continue;
            }
            if provider.client_ids().is_empty() {
                return Err(ConfigError::invalid(
                    &format!("auth.external.{name}.client_id"),
                    "is required when the provider is enabled",
                ));
            }
            if name == "keycloak" && !https_or_loopback(&provider.url) {
                return Err(ConfigError::invalid(
                    "auth.external.keycloak.url",
                    "must be the issuer's https:// URL (http:// only to a loopback host)",
                ));
            }
            if name == "azure"
                && !provider.url.trim().is_empty()
                && !https_or_loopback(&provider.url)
            {
                return Err(ConfigError::invalid(
                    "auth.external.azure.url",
                    "must be the authority's https:// URL (http:// only to a loopback host)",
                ));
            }
        }
        auth.external.check_oauth_and_apple()?;
        let consent = auth.oauth_server.consent_url.trim();
        if !consent.is_empty() {
            let absolute = (consent.starts_with("https://") || consent.starts_with("http://"))
                && consent
                    .split("://")
                    .nth(1)
                    .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            let path = consent.starts_with('/') && !consent.starts_with("//");
            if !(absolute || path)
                || consent.chars().any(char::is_whitespace)
                || consent.contains('#')
            {
                return Err(ConfigError::invalid(
                    "auth.oauth_server.consent_url",
                    "must be an http(s):// URL or a path starting with / (without a fragment)",
                ));
            }
        }
        let github = &auth.external.github;
        if github.enabled {
            if github.client_id.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "auth.external.github.client_id",
                    "is required when GitHub is enabled",
                ));
            }
            if github.secret.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "auth.external.github.secret",
                    "is required when GitHub is enabled",
                ));
            }
            for (key, url) in [
                ("auth.external.github.url", &github.url),
                ("auth.external.github.api_url", &github.api_url),
            ] {
                if !https_or_loopback(url) {
                    return Err(ConfigError::invalid(
                        key,
                        "must be an https:// URL (http:// only to a loopback host)",
                    ));
                }
            }
        }
        auth.webauthn.check(auth.site_url.as_deref())?;
        for (key, value) in [
            ("auth.hook.pg_timeout_ms", auth.hook.pg_timeout_ms),
            ("auth.hook.http_timeout_ms", auth.hook.http_timeout_ms),
        ] {
            if !(1..=60_000).contains(&value) {
                return Err(ConfigError::invalid(key, "must be between 1 and 60000"));
            }
        }
        Ok(())
    }

    /// Refuses a JWK set with an external issuer's keys (public-only
    /// asymmetric keys) when no audience would be required of their tokens.
    pub fn check_external_audience(&self, jwks: &serde_json::Value) -> Result<(), ConfigError> {
        let external = jwks
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|keys| {
                keys.iter().any(|key| {
                    matches!(
                        key.get("kty").and_then(serde_json::Value::as_str),
                        Some("RSA" | "EC" | "OKP")
                    ) && key.get("d").is_none()
                })
            });
        if external && self.jwt.jwks_audience.is_none() && self.jwt.audience.is_none() {
            return Err(ConfigError::invalid(
                "jwt.jwks_audience",
                "jwt.jwks holds public keys of an external issuer: set jwt.jwks_audience (or jwt.audience) to the audience their tokens must carry",
            ));
        }
        Ok(())
    }

    /// The configured JWK set, read from the file when given as `@path`.
    pub fn jwks(&self) -> Result<Option<serde_json::Value>, ConfigError> {
        let Some(raw) = &self.jwt.jwks else {
            return Ok(None);
        };
        let text = match raw.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path).map_err(|err| {
                ConfigError::invalid("jwt.jwks", format!("cannot read {path}: {err}"))
            })?,
            None => raw.clone(),
        };
        parse_jwks("jwt.jwks", &text).map(Some)
    }
}

fn parse_jwks(option: &str, text: &str) -> Result<serde_json::Value, ConfigError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|err| ConfigError::invalid(option, format!("not JSON: {err}")))?;
    if !value.get("keys").is_some_and(serde_json::Value::is_array) {
        return Err(ConfigError::invalid(
            option,
            "must be a JWK set: an object with a \"keys\" array",
        ));
    }
    Ok(value)
}

fn is_log_filter(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |text: &str| LEVELS.contains(&text.trim().to_ascii_lowercase().as_str());
    !filter.trim().is_empty()
        && filter
            .split(',')
            .all(|directive| match directive.split_once('=') {
                // `target=level`, e.g. `sovra_pg=debug`.
                Some((target, level)) => {
                    !target.trim().is_empty()
                        && target
                            .trim()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
                        && is_level(level)
                }
                // A bare word must be a level: `loud` is a typo, not a target.
                None => is_level(directive),
            })
}

/// The Markdown reference of every option, written to `docs/config.md`.
pub fn markdown_reference() -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated from crates/sovra-config/src/lib.rs by `cargo test -p sovra-config`; do not edit. -->\n\n\
         Sovra reads built-in defaults, then `sovra.toml` in the working directory (or the file named by `--config` or `SOVRA_CONFIG`), then `SOVRA_*` environment variables, then command-line flags; later ones win.\n\
         An unknown option in the file or on the command line, or a wrong value anywhere, stops Sovra at start with a message that names the option. An unknown `SOVRA_*` environment variable only gets a warning (naming the option it most likely meant), since shells often export `SOVRA_URL` and the like for clients.\n\n\
         | option | environment | default | meaning |\n|---|---|---|---|\n",
    );
    for option in OPTIONS {
        let default = if option.default.is_empty() {
            "unset".to_owned()
        } else {
            format!("`{}`", option.default)
        };
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} | {} |",
            option.key,
            option.env_name(),
            default,
            option.doc
        );
    }
    out.push_str("\nExample `sovra.toml`:\n\n```toml\n");
    out.push_str(EXAMPLE);
    out.push_str("```\n");
    out
}

const EXAMPLE: &str = r#"data_dir = "/var/lib/sovra"

[server]
listen = "0.0.0.0:54321"
public_url = "https://api.example.com"

[log]
format = "json"

[database]
# Leave unset to run the embedded PostgreSQL.
# url = "postgres://sovra:secret@db.internal:5432/app"
pool_size = 32

[jwt]
# Keep a Supabase project's secret so its shipped keys keep working.
# secret = "super-secret-jwt-token-with-at-least-32-characters-long"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load(toml_text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Loader::from_toml(toml_text, Path::new("test.toml"))?
            .env(env(vars))?
            .load()
    }

    #[test]
    fn no_configuration_gives_the_embedded_default() {
        let config = load("", &[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.database.url, None);
        assert_eq!(config.listen_addr().to_string(), "127.0.0.1:54321");
    }

    #[test]
    fn root_defaults_the_data_dir_to_a_place_postgres_reaches() {
        assert_eq!(default_data_dir(true, false), "/var/lib/sovra");
        assert_eq!(default_data_dir(false, false), "./sovra-data");
        // An existing project in ./sovra-data stays where it is.
        assert_eq!(default_data_dir(true, true), "./sovra-data");
        let root = |text: &str, vars: &[(&str, &str)]| {
            Loader::from_toml(text, Path::new("t.toml"))
                .unwrap()
                .env(env(vars))
                .unwrap()
                .default_data_dir(default_data_dir(true, false))
        };
        assert_eq!(
            root("", &[]).load().unwrap().data_dir,
            PathBuf::from("/var/lib/sovra")
        );
        // Whatever sets it wins over the root default: file, environment, flag.
        assert_eq!(
            root("data_dir = \"/srv/a\"\n", &[])
                .load()
                .unwrap()
                .data_dir,
            PathBuf::from("/srv/a")
        );
        assert_eq!(
            root("", &[("SOVRA_DATA_DIR", "/srv/b")])
                .load()
                .unwrap()
                .data_dir,
            PathBuf::from("/srv/b")
        );
        assert_eq!(
            root("", &[])
                .set("data_dir", "/srv/c")
                .load()
                .unwrap()
                .data_dir,
            PathBuf::from("/srv/c")
        );
        // And an empty one is still refused, whatever the default.
        let err = root("", &[("SOVRA_DATA_DIR", "")]).load().unwrap_err();
        assert!(err.to_string().contains("`data_dir`"), "{err}");
    }

    #[test]
    fn nats_credentials_are_read_from_the_first_url_with_a_user() {
        let login = |user: &str, password: &str| {
            Some(NatsCredentials::Login {
                user: user.to_owned(),
                password: password.to_owned(),
            })
        };
        assert_eq!(nats_url_credentials("nats://n1:4222"), None);
        assert_eq!(nats_url_credentials(""), None);
        assert_eq!(nats_url_credentials("nats://a:b@n1:4222"), login("a", "b"));
        assert_eq!(
            nats_url_credentials("nats://n1:4222, tls://tok@n2:4222/x"),
            Some(NatsCredentials::Token("tok".to_owned()))
        );
        // A password may hold `:` and `@`; the host is after the last `@`.
        assert_eq!(
            nats_url_credentials("nats://u:p:w@x@n1"),
            login("u", "p:w@x")
        );
        // No scheme: a nats:// address, as async-nats reads it.
        assert_eq!(nats_url_credentials("u:p@n1:4222"), login("u", "p"));
        // An empty user is none: the next URL's are taken.
        assert_eq!(
            nats_url_credentials("nats://:p@n1,nats://v:w@n2"),
            login("v", "w")
        );
        assert_eq!(nats_url_credentials("nats://@n1"), None);
        // `@` after the authority is not user information.
        assert_eq!(nats_url_credentials("nats://n1/a@b"), None);
        // Debug shows no secret.
        let shown = format!("{:?}", nats_url_credentials("nats://a:s3cr3t@n1"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        let shown = format!("{:?}", nats_url_credentials("nats://t0ken@n1"));
        assert!(!shown.contains("t0ken"), "{shown}");
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let config = load(
            "[jwt]\nsecret = \"jwt-secret-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"\n\
             [net]\nwebhook_secret = \"whsec_SECRETSECRETSECRET\"\n\
             [metrics]\ntoken = \"metrics-token-SECRET\"\n\
             [database]\nurl = \"postgres://app:db-password-SECRET@db.internal:5432/app\"\n\
             read_urls = \"postgres://r:replica-password-SECRET@r1/app, postgres://r2/app\"\n\
             [realtime]\nnats_url = \"nats://nats-user:nats-password-SECRET@nats:4222\"\n\
             [auth]\nsmtp_url = \"smtp://mailer:smtp-password-SECRET@mail:587\"\n\
             [storage.s3]\nsecret_access_key = \"s3-secret-SECRET\"\n",
            &[],
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        // What is not secret is still there to debug with.
        assert!(
            shown.contains("postgres://app:***@db.internal:5432/app"),
            "{shown}"
        );
        assert!(shown.contains("postgres://r2/app"), "{shown}");
        assert!(shown.contains("nats://nats-user:***@nats:4222"), "{shown}");
        assert!(shown.contains("smtp://mailer:***@mail:587"), "{shown}");
        assert!(shown.contains("webhook_secret: \"***\""), "{shown}");
        assert!(shown.contains("token: \"***\""), "{shown}");
        let unset = format!("{:?}", Config::default());
        assert!(unset.contains("secret: None"), "{unset}");
        assert_eq!(
            url_without_password("postgres://u@h/db"),
            "postgres://u@h/db"
        );
        assert_eq!(
            url_without_password("postgres://h/db?user=x"),
            "postgres://h/db?user=x"
        );
        assert_eq!(url_without_password("not a url"), "not a url");
        assert_eq!(
            url_without_password("nats://s3cr3t-token@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(
            urls_without_passwords("nats://a:b@n1:4222,tls://tok@n2:4222"),
            "nats://a:***@n1:4222,tls://***@n2:4222"
        );
        assert_eq!(
            url_without_password("redis://:pw@h:6379"),
            "redis://:***@h:6379"
        );
        assert_eq!(
            urls_without_passwords("postgres://u:pa,ss@h/db, postgres://v:w@r/db"),
            "postgres://u:***@h/db, postgres://v:***@r/db"
        );
        assert_eq!(urls_without_passwords("host=h user=u password=p"), "***");
        assert_eq!(urls_without_passwords("postgres://h/db?password=p"), "***");
        let keys = load(
            "[jwt]\njwks = '{\"keys\":[{\"kty\":\"oct\",\"k\":\"SECRETKEY\"}]}'\n",
            &[],
        )
        .unwrap();
        let shown = format!("{keys:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }

    #[test]
    fn net_options_load_from_file_and_environment() {
        let config = load(
            "[net]\nallow_list = \"hooks.internal, 10.0.0.0/8 ,::1\"\nwebhook_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
            &[("SOVRA_NET_ALLOW_PRIVATE", "true"), ("SOVRA_NET_MAX_ATTEMPTS", "3")],
        )
        .unwrap();
        assert!(config.net.allow_private);
        assert_eq!(config.net.max_attempts, 3);
        assert_eq!(
            config.net.allow_list_entries(),
            ["hooks.internal", "10.0.0.0/8", "::1"]
        );
        assert!(!Config::default().net.allow_private);
        let err = load("", &[("SOVRA_NET_CONCURRENCY", "5000")]).unwrap_err();
        assert!(err.to_string().contains("net.concurrency"), "{err}");
    }

    #[test]
    fn read_urls_are_listed_and_checked() {
        let config = Config::default();
        assert!(config.database.read_url_list().is_empty());
        assert_eq!(config.database.read_max_lag, 5);
        assert_eq!(config.database.read_wait_ms, 100);
        let two = load(
            "",
            &[(
                "SOVRA_DATABASE_READ_URLS",
                " postgres://replica1:5432 , postgresql://u:p@replica2/app ,",
            )],
        )
        .unwrap();
        assert_eq!(
            two.database.read_url_list(),
            ["postgres://replica1:5432", "postgresql://u:p@replica2/app"]
        );
        let socket = load(
            "[database]\nread_urls = \"postgres://%2Ftmp%2Freplica:5433\"\nread_max_lag = 60\nread_wait_ms = 0\n",
            &[],
        )
        .unwrap();
        assert_eq!(socket.database.read_url_list().len(), 1);
        assert_eq!(socket.database.read_wait_ms, 0);
        for (text, option) in [
            (
                "[database]\nread_urls = \"mysql://replica\"\n",
                "database.read_urls",
            ),
            (
                "[database]\nread_urls = \"postgres://\"\n",
                "database.read_urls",
            ),
            (
                "[database]\nread_urls = \"postgres://:5432\"\n",
                "database.read_urls",
            ),
            (
                "[database]\nread_urls = \"postgres://u@/db\"\n",
                "database.read_urls",
            ),
            (
                "[database]\nread_urls = \"host=replica port=5432\"\n",
                "database.read_urls",
            ),
            ("[database]\nread_max_lag = 0\n", "database.read_max_lag"),
            ("[database]\nread_max_lag = 3601\n", "database.read_max_lag"),
            ("[database]\nread_wait_ms = 5001\n", "database.read_wait_ms"),
            ("[database]\nread_wait_ms = -1\n", "database.read_wait_ms"),
        ] {
            let err = load(text, &[]).unwrap_err();
            assert!(err.to_string().contains(option), "{text}: {err}");
        }
    }

    #[test]
    fn shared_state_follows_the_cluster_unless_named() {
        // Auto: memory on one node, PostgreSQL once nodes share NATS.
        assert!(!Config::default().shared_state_in_postgres());
        let nats = ("SOVRA_REALTIME_NATS_URL", "nats://127.0.0.1:4222");
        assert!(load("", &[nats]).unwrap().shared_state_in_postgres());
        let memory = ("SOVRA_SERVER_SHARED_STATE", "memory");
        assert!(
            !load("", &[nats, memory])
                .unwrap()
                .shared_state_in_postgres()
        );
        let postgres = load("[server]\nshared_state = \"postgres\"\n", &[]).unwrap();
        assert!(postgres.shared_state_in_postgres());
        let err = load("", &[("SOVRA_SERVER_SHARED_STATE", "nats")]).unwrap_err();
        assert!(err.to_string().contains("server.shared_state"), "{err}");
    }

    #[test]
    fn image_options_load_from_file_and_environment() {
        let config = load(
            "[storage.image]\nmax_pixels = 1000000\ncache_size = 0\n",
            &[
                ("SOVRA_STORAGE_IMAGE_ENABLED", "false"),
                ("SOVRA_STORAGE_IMAGE_CONCURRENCY", "4"),
            ],
        )
        .unwrap();
        let image = &config.storage.image;
        assert!(!image.enabled);
        assert_eq!(image.concurrency, 4);
        assert_eq!(image.max_pixels, 1_000_000);
        assert_eq!(image.cache_size, 0);
        assert_eq!(image.max_dimension, 2500);
        let err = load("", &[("SOVRA_STORAGE_IMAGE_MAX_DIMENSION", "-1")]).unwrap_err();
        assert!(
            err.to_string().contains("storage.image.max_dimension"),
            "{err}"
        );
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let text =
            "[server]\nlisten = \"127.0.0.1:1000\"\nbody_limit = 2048\n[database]\npool_size = 4\n";
        let config = Loader::from_toml(text, Path::new("t.toml"))
            .unwrap()
            .env(env(&[
                ("SOVRA_SERVER_LISTEN", "127.0.0.1:2000"),
                ("SOVRA_DATABASE_POOL_SIZE", "8"),
                ("SOVRA_SERVER_REQUIRE_APIKEY", "yes"),
                ("PATH", "/usr/bin"),
            ]))
            .unwrap()
            .set("server.listen", "127.0.0.1:3000")
            .load()
            .unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:3000");
        assert_eq!(config.server.body_limit, 2048);
        assert_eq!(config.database.pool_size, 8);
        assert!(config.server.require_apikey);
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let err = load("[server]\nlisen = \"x\"\n", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown configuration option `server.lisen` (see docs/config.md for the list)"
        );
        let err = load("colour = 1\n", &[]).unwrap_err();
        assert!(err.to_string().contains("`colour`"), "{err}");
    }

    #[test]
    fn unknown_environment_variables_are_warned_about_not_refused() {
        let loader = Loader::from_toml("", Path::new("t.toml"))
            .unwrap()
            .env(env(&[
                ("SOVRA_URL", "https://api.example.com"),
                ("SOVRA_SERVER_LISEN", "127.0.0.1:1"),
                ("SOVRA_ANON_KEY", "secret-value"),
                ("SOVRA_DATABASE_POOL_SIZE", "4"),
                ("SOVRA_CONFIG", "x.toml"),
                ("SOVRA_TEST_DATABASE_URL", "postgres://x"),
            ]))
            .unwrap();
        assert_eq!(
            loader.unknown_env(),
            ["SOVRA_ANON_KEY", "SOVRA_SERVER_LISEN", "SOVRA_URL"]
        );
        let warnings = loader.env_warnings();
        assert_eq!(warnings.len(), 3);
        assert!(
            warnings[1].contains("did you mean SOVRA_SERVER_LISTEN (`server.listen`)"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].starts_with("ignoring environment variable SOVRA_URL: it names no option"),
            "{warnings:?}"
        );
        assert!(
            !warnings.iter().any(|w| w.contains("secret-value")),
            "values never appear in warnings"
        );
        // The known variable still applies; the unknown ones change nothing.
        let config = loader.load().unwrap();
        assert_eq!(config.database.pool_size, 4);
        assert_eq!(config.server.listen, "127.0.0.1:54321");
    }

    #[test]
    fn unknown_flags_are_still_refused() {
        let err = Loader::default()
            .set("server.lisen", "x")
            .load()
            .unwrap_err();
        assert!(err.to_string().contains("`server.lisen`"), "{err}");
    }

    #[test]
    fn metrics_token_is_validated_and_exposure_is_detected() {
        for bad in [
            "short",
            "has a space in it!!",
            "tab\tinside-the-token-x",
            "",
        ] {
            let text = format!("[metrics]\ntoken = \"{bad}\"\n");
            let err = load(&text, &[]).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("invalid value for `metrics.token`"),
                "{bad:?}: {err}"
            );
        }
        let config = load("", &[("SOVRA_METRICS_TOKEN", "0123456789abcdef-scrape")]).unwrap();
        assert_eq!(
            config.metrics.token.as_deref(),
            Some("0123456789abcdef-scrape")
        );
        assert!(!config.metrics_exposed());
        assert!(
            !load("", &[]).unwrap().metrics_exposed(),
            "loopback default"
        );
        let open = load("[server]\nlisten = \"0.0.0.0:54321\"\n", &[]).unwrap();
        assert!(open.metrics_exposed());
        let open6 = load("[server]\nlisten = \"[::]:54321\"\n", &[]).unwrap();
        assert!(open6.metrics_exposed());
        let local6 = load("[server]\nlisten = \"[::1]:54321\"\n", &[]).unwrap();
        assert!(!local6.metrics_exposed());
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(
            edit_distance("SOVRA_SERVER_LISEN", "SOVRA_SERVER_LISTEN"),
            1
        );
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn wrong_types_name_the_option() {
        let err = load("[server]\nbody_limit = \"big\"\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid value for `server.body_limit`"),
            "{err}"
        );
        let err = load("", &[("SOVRA_DATABASE_POOL_SIZE", "many")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `database.pool_size`: SOVRA_DATABASE_POOL_SIZE must be an integer, got \"many\""
        );
        let err = load("", &[("SOVRA_SERVER_REQUIRE_APIKEY", "maybe")]).unwrap_err();
        assert!(err.to_string().contains("true or false"), "{err}");
        let err = load("[log]\nformat = \"xml\"\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid value for `log.format`"),
            "{err}"
        );
        let err = load("[embedded]\nport = 70000\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid value for `embedded.port`"),
            "{err}"
        );
    }

    #[test]
    fn the_tenant_secrets_keys_come_from_the_environment_and_are_never_shown() {
        let key = "0123456789abcdef".repeat(4);
        let old = "fedcba9876543210".repeat(4);
        let config = load(
            "",
            &[
                ("SOVRA_SERVER_TENANT_SECRETS_KEY", &key),
                (
                    "SOVRA_SERVER_TENANT_SECRETS_OLD_KEYS",
                    &format!("{old}, {key}"),
                ),
            ],
        )
        .unwrap();
        assert_eq!(config.server.tenant_secrets_key.0, key);
        assert_eq!(config.server.tenant_secrets_old_keys.parts(), [&old, &key]);
        let shown = format!("{config:?}");
        assert!(!shown.contains(&key) && !shown.contains(&old), "{shown}");
        assert!(load("", &[]).unwrap().server.tenant_secrets_key.is_empty());
    }

    #[test]
    fn invalid_values_name_the_option() {
        let cases: &[(&str, &str)] = &[
            ("[server]\nlisten = \"localhost\"\n", "server.listen"),
            (
                "[server]\npublic_url = \"example.com\"\n",
                "server.public_url",
            ),
            ("[server]\nbody_limit = 10\n", "server.body_limit"),
            (
                "[server]\ntenant_idle_timeout = 0\n",
                "server.tenant_idle_timeout",
            ),
            (
                "[server]\ntenant_database_check_interval = 0\n",
                "server.tenant_database_check_interval",
            ),
            (
                "[server]\ntenant_secrets_key = \"not-hex\"\n",
                "server.tenant_secrets_key",
            ),
            (
                "[server]\ntenant_secrets_key = \"abcd\"\n",
                "server.tenant_secrets_key",
            ),
            (
                "[server]\ntenant_secrets_old_keys = \"00,11\"\n",
                "server.tenant_secrets_old_keys",
            ),
            (
                "[server]\ntenant_storage_max_bytes = -1\n",
                "server.tenant_storage_max_bytes",
            ),
            (
                "[server]\nbase_domain = \"https://example.com\"\n",
                "server.base_domain",
            ),
            (
                "[server]\nbase_domain = \"Example.com:80\"\n",
                "server.base_domain",
            ),
            (
                "[server]\nbody_idle_timeout = 0\n",
                "server.body_idle_timeout",
            ),
            ("[dashboard]\nsession_ttl = 0\n", "dashboard.session_ttl"),
            (
                "[dashboard]\nsession_ttl = 86401\n",
                "dashboard.session_ttl",
            ),
            (
                "[server]\nheader_read_timeout = 0\n",
                "server.header_read_timeout",
            ),
            ("[storage]\nio_threads = 0\n", "storage.io_threads"),
            ("[storage]\nio_threads = 1000\n", "storage.io_threads"),
            ("[storage]\nio_wait = 0\n", "storage.io_wait"),
            ("[storage]\nio_wait = 3601\n", "storage.io_wait"),
            (
                "[storage.s3_protocol]\nregion = \"\"\n",
                "storage.s3_protocol.region",
            ),
            (
                "[storage.s3_protocol]\nregion = \"US East\"\n",
                "storage.s3_protocol.region",
            ),
            (
                "[storage.image]\nmax_dimension = 0\n",
                "storage.image.max_dimension",
            ),
            (
                "[storage.image]\nmax_dimension = 10001\n",
                "storage.image.max_dimension",
            ),
            (
                "[storage.image]\nmax_pixels = 0\n",
                "storage.image.max_pixels",
            ),
            (
                "[storage.image]\nmax_pixels = 200000001\n",
                "storage.image.max_pixels",
            ),
            (
                "[storage.image]\nmax_source_size = 0\n",
                "storage.image.max_source_size",
            ),
            (
                "[storage.image]\nconcurrency = 0\n",
                "storage.image.concurrency",
            ),
            (
                "[storage.image]\nconcurrency = 65\n",
                "storage.image.concurrency",
            ),
            (
                "[storage.image]\nenabled = \"yes\"\n",
                "storage.image.enabled",
            ),
            ("[log]\nlevel = \"loud\"\n", "log.level"),
            ("[database]\nurl = \"mysql\"\n", "database.url"),
            ("[database]\npool_size = 0\n", "database.pool_size"),
            (
                "[database]\nconnect_timeout = 0\n",
                "database.connect_timeout",
            ),
            ("[rest]\nschemas = \" , \"\n", "rest.schemas"),
            ("[rest]\nopenapi_mode = \"everyone\"\n", "rest.openapi_mode"),
            ("[rest]\nplan_enabled = \"yes\"\n", "rest.plan_enabled"),
            (
                "[server]\nshared_state = \"redis\"\n",
                "server.shared_state",
            ),
            (
                "[rest]\nidempotency_retention = 0\n",
                "rest.idempotency_retention",
            ),
            (
                "[rest]\nidempotency_retention = 2592001\n",
                "rest.idempotency_retention",
            ),
            ("[embedded]\nport = 0\n", "embedded.port"),
            ("[embedded]\nsystem_user = \"\"\n", "embedded.system_user"),
            ("[jwt]\nsecret = \"short\"\n", "jwt.secret"),
            ("[jwt]\njwks = \"{}\"\n", "jwt.jwks"),
            ("[jwt]\njwks = \"not json\"\n", "jwt.jwks"),
            ("data_dir = \"\"\n", "data_dir"),
            (
                "[realtime]\nnats_url = \"localhost:4222\"\n",
                "realtime.nats_url",
            ),
            ("[net]\nallow_list = \"10.0.0.0/33\"\n", "net.allow_list"),
            (
                "[net]\nallow_list = \"ok.host, http://x\"\n",
                "net.allow_list",
            ),
            ("[net]\nconcurrency = 0\n", "net.concurrency"),
            ("[net]\nmax_response_size = 10\n", "net.max_response_size"),
            ("[net]\nmax_attempts = 0\n", "net.max_attempts"),
            ("[net]\nretry_base = 1\n", "net.retry_base"),
            ("[net]\nwebhook_secret = \"secret\"\n", "net.webhook_secret"),
            (
                "[net]\nwebhook_secret = \"whsec_!!!!\"\n",
                "net.webhook_secret",
            ),
            ("[net]\nallow_private = \"maybe\"\n", "net.allow_private"),
            (
                "[realtime]\nnats_subject = \"sovra.*\"\n",
                "realtime.nats_subject",
            ),
            (
                "[realtime]\nnats_subject = \"a..b\"\n",
                "realtime.nats_subject",
            ),
            (
                "[realtime]\noutbound_queue_bytes = 1024\n",
                "realtime.outbound_queue_bytes",
            ),
            (
                "[realtime]\ncatchup_max_bytes = 0\n",
                "realtime.catchup_max_bytes",
            ),
            (
                "[realtime]\nfeed_batch_bytes = 100\n",
                "realtime.feed_batch_bytes",
            ),
            (
                "[realtime]\nslow_consumer_timeout = 0\n",
                "realtime.slow_consumer_timeout",
            ),
            (
                "[realtime]\nmax_bindings_per_channel = 0\n",
                "realtime.max_bindings_per_channel",
            ),
            (
                "[realtime]\nmax_presence_bytes = 0\n",
                "realtime.max_presence_bytes",
            ),
            (
                "[realtime]\nrevalidate_interval = 0\n",
                "realtime.revalidate_interval",
            ),
            ("[cron]\nmax_running = 0\n", "cron.max_running"),
            ("[cron]\nmax_running = 101\n", "cron.max_running"),
        ];
        for (text, option) in cases {
            let err = load(text, &[]).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid value for `{option}`")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn hooks_are_validated_as_gotrue_validates_them() {
        let secret = "v1,whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let good = load(
            "[auth.hook.custom_access_token]\nenabled = true\nuri = \"pg-functions://postgres/public/custom_access_token_hook\"\n",
            &[
                ("SOVRA_AUTH_HOOK_SEND_EMAIL_ENABLED", "true"),
                ("SOVRA_AUTH_HOOK_SEND_EMAIL_URI", "https://hooks.example.com/mail"),
                ("SOVRA_AUTH_HOOK_SEND_EMAIL_SECRETS", secret),
                ("SOVRA_AUTH_HOOK_PG_TIMEOUT_MS", "500"),
            ],
        )
        .unwrap();
        assert!(good.auth.hook.custom_access_token.enabled);
        assert_eq!(
            good.auth.hook.send_email.uri,
            "https://hooks.example.com/mail"
        );
        assert_eq!(good.auth.hook.pg_timeout_ms, 500);
        assert!(
            !format!("{good:?}").contains("whsec_"),
            "secrets are not in Debug"
        );
        // A disabled hook is not checked (GoTrue populates enabled ones only).
        load("[auth.hook.send_sms]\nuri = \"ftp://x\"\n", &[]).unwrap();
        let refused: &[(&str, &str, &str)] = &[
            (
                "[auth.hook.custom_access_token]\nenabled = true\n",
                "auth.hook.custom_access_token",
                "no `uri`",
            ),
            (
                "[auth.hook.custom_access_token]\nenabled = true\nuri = \"pg-functions://postgres/public\"\n",
                "auth.hook.custom_access_token",
                "pg-functions://<database>/<schema>/<function>",
            ),
            (
                "[auth.hook.before_user_created]\nenabled = true\nuri = \"pg-functions://postgres/public/f;drop\"\n",
                "auth.hook.before_user_created",
                "plain identifiers",
            ),
            (
                "[auth.hook.send_email]\nenabled = true\nuri = \"ftp://example.com/x\"\n",
                "auth.hook.send_email",
                "only postgres hooks and HTTPS",
            ),
            (
                "[auth.hook.send_email]\nenabled = true\nuri = \"http://example.com/x\"\n",
                "auth.hook.send_email",
                "only localhost",
            ),
            (
                "[auth.hook.send_sms]\nenabled = true\nuri = \"https://example.com/x\"\n",
                "auth.hook.send_sms",
                "needs `secrets`",
            ),
            (
                "[auth.hook.send_sms]\nenabled = true\nuri = \"https://example.com/x\"\nsecrets = \"whsec_abc\"\n",
                "auth.hook.send_sms",
                "invalid secret format",
            ),
            (
                "[auth.hook.send_sms]\nenabled = true\nuri = \"https://u:p@example.com/x\"\nsecrets = \"v1,whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
                "auth.hook.send_sms",
                "credentials",
            ),
            (
                "[auth.hook]\npg_timeout_ms = 0\n",
                "auth.hook.pg_timeout_ms",
                "between 1 and 60000",
            ),
            (
                "[auth.hook]\nhttp_timeout_ms = 60001\n",
                "auth.hook.http_timeout_ms",
                "between 1 and 60000",
            ),
        ];
        for (text, option, why) in refused {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid value for `{option}`")) && err.contains(why),
                "{text}: {err}"
            );
        }
        assert!(matches!(
            load("[auth.hook.custom_access_token]\nurl = \"x\"\n", &[]),
            Err(ConfigError::Unknown(_))
        ));
        assert!(matches!(
            load("[auth.hook.nonesuch]\nenabled = true\n", &[]),
            Err(ConfigError::Unknown(_))
        ));
    }

    #[test]
    fn oauth_server_options_are_validated() {
        let config = load(
            "",
            &[
                ("SOVRA_AUTH_OAUTH_SERVER_CONSENT_URL", "/consent"),
                ("SOVRA_AUTH_OAUTH_SERVER_DYNAMIC_REGISTRATION", "true"),
            ],
        )
        .unwrap();
        assert_eq!(config.auth.oauth_server.consent_url, "/consent");
        assert!(config.auth.oauth_server.dynamic_registration);
        assert!(
            !load("", &[])
                .unwrap()
                .auth
                .oauth_server
                .dynamic_registration
        );
        load(
            "[auth.oauth_server]\nconsent_url = \"https://app.example.com/oauth/consent\"\n",
            &[],
        )
        .unwrap();
        for bad in [
            "app.example.com/consent",
            "//evil.example.com/consent",
            "https://",
            "javascript:alert(1)",
            "/consent#x",
            "/con sent",
        ] {
            let err = load(
                &format!("[auth.oauth_server]\nconsent_url = {bad:?}\n"),
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.starts_with("invalid value for `auth.oauth_server.consent_url`"),
                "{bad}: {err}"
            );
        }
        let err = load(
            "",
            &[("SOVRA_AUTH_OAUTH_SERVER_DYNAMIC_REGISTRATION", "maybe")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("auth.oauth_server.dynamic_registration"),
            "{err}"
        );
    }

    #[test]
    fn webauthn_options_are_validated() {
        let good = load(
            "[auth]\nsite_url = \"https://app.example.com\"\n[auth.webauthn]\nrp_id = \"example.com\"\nrp_origins = \"https://app.example.com, https://example.com/\"\nchallenge_expiry = 60\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            good.auth.webauthn.origin_list(),
            ["https://app.example.com", "https://example.com"]
        );
        assert!(good.auth.webauthn.passkeys);
        let off = load("", &[("SOVRA_AUTH_WEBAUTHN_PASSKEYS", "false")]).unwrap();
        assert!(!off.auth.webauthn.passkeys);
        for (text, option) in [
            (
                "[auth.webauthn]\nchallenge_expiry = 5\n",
                "auth.webauthn.challenge_expiry",
            ),
            (
                "[auth.webauthn]\nmax_passkeys = 0\n",
                "auth.webauthn.max_passkeys",
            ),
            (
                "[auth.webauthn]\nrp_id = \"https://example.com\"\n",
                "auth.webauthn.rp_id",
            ),
            (
                "[auth.webauthn]\nrp_id = \"Example.com\"\n",
                "auth.webauthn.rp_id",
            ),
            (
                "[auth.webauthn]\nrp_origins = \"example.com\"\n",
                "auth.webauthn.rp_origins",
            ),
            (
                "[auth.webauthn]\nrp_origins = \"http://example.com\"\n",
                "auth.webauthn.rp_origins",
            ),
            (
                "[auth.webauthn]\nrp_origins = \"https://example.com/app\"\n",
                "auth.webauthn.rp_origins",
            ),
            (
                "[auth.webauthn]\nrp_id = \"example.com\"\nrp_origins = \"https://evil.com\"\n",
                "auth.webauthn.rp_origins",
            ),
            (
                "[auth]\nsite_url = \"https://app.example.com\"\n[auth.webauthn]\nrp_origins = \"https://other.example.com\"\n",
                "auth.webauthn.rp_origins",
            ),
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid value for `{option}`")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn external_providers_are_validated() {
        let good = load(
            "[auth.external.keycloak]\nenabled = true\nclient_id = \"web, ios\"\nurl = \"https://id.example.com/realms/app\"\n",
            &[
                ("SOVRA_AUTH_EXTERNAL_GOOGLE_ENABLED", "true"),
                ("SOVRA_AUTH_EXTERNAL_GOOGLE_CLIENT_ID", "123.apps.googleusercontent.com"),
                ("SOVRA_AUTH_EXTERNAL_GOOGLE_SECRET", "GOCSPX-very-secret"),
            ],
        )
        .unwrap();
        assert!(
            !format!("{good:?}").contains("very-secret"),
            "secrets are not in Debug"
        );
        assert_eq!(good.auth.external.keycloak.client_ids(), ["web", "ios"]);
        assert!(good.auth.external.google.enabled);
        load(
            "[auth.external.keycloak]\nenabled = true\nclient_id = \"a\"\nurl = \"http://127.0.0.1:8080/realms/x\"\n",
            &[],
        )
        .unwrap();
        let refused: &[(&str, &str)] = &[
            (
                "[auth.external.google]\nenabled = true\n",
                "auth.external.google.client_id",
            ),
            (
                "[auth.external.keycloak]\nenabled = true\nclient_id = \"a\"\n",
                "auth.external.keycloak.url",
            ),
            (
                "[auth.external.keycloak]\nenabled = true\nclient_id = \"a\"\nurl = \"http://id.example.com\"\n",
                "auth.external.keycloak.url",
            ),
            (
                "[auth.external.keycloak]\nenabled = true\nclient_id = \"a\"\nurl = \"http://127.0.0.1.evil.com\"\n",
                "auth.external.keycloak.url",
            ),
        ];
        for (text, option) in refused {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid value for `{option}`")),
                "{text}: {err}"
            );
        }
        let github = load(
            "[auth.external.github]\nenabled = true\nclient_id = \"Iv1.abc\"\nsecret = \"gh-secret-value\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            github.auth.external.github.api_url,
            "https://api.github.com"
        );
        assert!(!format!("{github:?}").contains("gh-secret-value"));
        for (text, option) in [
            (
                "[auth.external.github]\nenabled = true\nsecret = \"s\"\n",
                "auth.external.github.client_id",
            ),
            (
                "[auth.external.github]\nenabled = true\nclient_id = \"c\"\n",
                "auth.external.github.secret",
            ),
            (
                "[auth.external.github]\nenabled = true\nclient_id = \"c\"\nsecret = \"s\"\nurl = \"http://github.example.com\"\n",
                "auth.external.github.url",
            ),
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid value for `{option}`")),
                "{text}: {err}"
            );
        }
        assert!(matches!(
            load("[auth.external.twitter]\nenabled = true\n", &[]),
            Err(ConfigError::Unknown(_))
        ));
    }

    #[test]
    fn gitlab_discord_apple_and_azure_are_validated() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIGTAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBHkwdwIBAQQg\n-----END PRIVATE KEY-----";
        let good = load(
            &format!(
                "[auth.external.gitlab]\nenabled = true\nclient_id = \"gl\"\nsecret = \"gl-secret-value\"\nurl = \"https://gitlab.example.com\"\n\
                 [auth.external.discord]\nenabled = true\nclient_id = \"dc\"\nsecret = \"dc-secret-value\"\n\
                 [auth.external.apple]\nenabled = true\nclient_id = \"com.example.web, com.example.ios\"\nteam_id = \"TEAM\"\nkey_id = \"KEY\"\nprivate_key = \"\"\"{pem}\"\"\"\n\
                 [auth.external.azure]\nenabled = true\nclient_id = \"az\"\nsecret = \"az-secret-value\"\n"
            ),
            &[],
        )
        .unwrap();
        let shown = format!("{good:?}");
        for secret in [
            "gl-secret-value",
            "dc-secret-value",
            "az-secret-value",
            "MIGTAgEA",
        ] {
            assert!(!shown.contains(secret), "{secret} in Debug");
        }
        assert_eq!(
            good.auth.external.apple.client_ids(),
            ["com.example.web", "com.example.ios"]
        );
        // Apple without a key still takes native ID tokens.
        load(
            "[auth.external.apple]\nenabled = true\nclient_id = \"com.example.ios\"\n",
            &[],
        )
        .unwrap();
        let refused: Vec<(String, &str)> = vec![
            (
                "[auth.external.gitlab]\nenabled = true\nsecret = \"s\"\n".into(),
                "auth.external.gitlab.client_id",
            ),
            (
                "[auth.external.discord]\nenabled = true\nclient_id = \"c\"\n".into(),
                "auth.external.discord.secret",
            ),
            (
                "[auth.external.gitlab]\nenabled = true\nclient_id = \"c\"\nsecret = \"s\"\nurl = \"http://gitlab.example.com\"\n".into(),
                "auth.external.gitlab.url",
            ),
            (
                "[auth.external.apple]\nenabled = true\n".into(),
                "auth.external.apple.client_id",
            ),
            (
                "[auth.external.apple]\nenabled = true\nclient_id = \"c\"\nprivate_key = \"not a key\"\nteam_id = \"T\"\nkey_id = \"K\"\n".into(),
                "auth.external.apple.private_key",
            ),
            (
                format!("[auth.external.apple]\nenabled = true\nclient_id = \"c\"\nkey_id = \"K\"\nprivate_key = \"\"\"{pem}\"\"\"\n"),
                "auth.external.apple.team_id",
            ),
            (
                "[auth.external.azure]\nenabled = true\n".into(),
                "auth.external.azure.client_id",
            ),
            (
                "[auth.external.azure]\nenabled = true\nclient_id = \"a\"\nurl = \"http://login.example.com/common/v2.0\"\n".into(),
                "auth.external.azure.url",
            ),
        ];
        for (text, option) in refused {
            let err = load(&text, &[]).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid value for `{option}`")),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn code_attempts_must_be_between_1_and_100() {
        for text in [
            "[auth]\ncode_attempts = 0\n",
            "[auth]\ncode_attempts = 101\n",
        ] {
            let err = load(text, &[]).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("invalid value for `auth.code_attempts`"),
                "{text}: {err}"
            );
        }
        assert_eq!(
            load("[auth]\ncode_attempts = 3\n", &[])
                .unwrap()
                .auth
                .code_attempts,
            3
        );
    }

    #[test]
    fn good_values_are_accepted() {
        let config = load(
            "[log]\nlevel = \"info,sovra_pg=debug\"\nformat = \"json\"\n[database]\nurl = \"postgres://u:p@localhost/db\"\n[jwt]\nsecret = \"super-secret-jwt-token-with-at-least-32-characters-long\"\njwks = '{\"keys\":[]}'\n",
            &[],
        )
        .unwrap();
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.jwks().unwrap().unwrap()["keys"],
            serde_json::json!([])
        );
    }

    #[test]
    fn broken_toml_names_the_file() {
        let err = load("[server\n", &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("configuration file test.toml is not valid TOML"),
            "{err}"
        );
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_explicit_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        assert!(Loader::file(&path, false).is_ok());
        let err = Loader::file(&path, true).unwrap_err();
        assert!(err.to_string().contains("absent.toml"), "{err}");
        std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:9\"\n").unwrap();
        let config = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(config.server.listen, "127.0.0.1:9");
    }

    #[test]
    fn every_option_has_a_default_that_parses() {
        for option in OPTIONS {
            if option.default.is_empty() {
                continue;
            }
            let mut table = toml::Table::new();
            let value: toml::Value = format!("v = {}", option.default)
                .parse::<toml::Table>()
                .unwrap()
                .remove("v")
                .unwrap();
            insert_path(&mut table, option.key, value);
            let text = toml::to_string(&table).unwrap();
            load(&text, &[]).unwrap_or_else(|err| panic!("{}: {err}", option.key));
        }
    }

    #[test]
    fn hashing_and_external_jwt_options_are_validated() {
        let external = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b","kid":"idp"}]}"#;
        let cases: &[(String, &str)] = &[
            (
                "[auth]\nhash_queue = 100001\n".to_owned(),
                "auth.hash_queue",
            ),
            (
                "[auth]\nhash_concurrency = 257\n".to_owned(),
                "auth.hash_concurrency",
            ),
            (format!("[jwt]\njwks = '{external}'\n"), "jwt.jwks_audience"),
            ("[jwt]\njwks_issuer = \" \"\n".to_owned(), "jwt.jwks_issuer"),
            (
                "[jwt]\njwks_audience = \"\"\n".to_owned(),
                "jwt.jwks_audience",
            ),
        ];
        for (text, option) in cases {
            let err = load(text, &[]).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid value for `{option}`")),
                "{text}: {err}"
            );
        }
        for text in [
            format!("[jwt]\njwks = '{external}'\njwks_audience = \"my-api\"\n"),
            format!("[jwt]\njwks = '{external}'\naudience = \"authenticated\"\n"),
            "[auth]\nhash_queue = 0\nhash_concurrency = 256\n".to_owned(),
        ] {
            load(&text, &[]).unwrap_or_else(|err| panic!("{text}: {err}"));
        }
        let config = load(
            "[jwt]\njwks_issuer = \"https://idp.example.com/\"\n",
            &[("SOVRA_AUTH_HASH_QUEUE", "7")],
        )
        .unwrap();
        assert_eq!(config.auth.hash_queue, 7);
        assert_eq!(
            config.jwt.jwks_issuer.as_deref(),
            Some("https://idp.example.com/")
        );
    }

    /// Keeps `docs/config.md` in step with [`OPTIONS`]. Run with
    /// `SOVRA_UPDATE_DOCS=1` (or just re-run: it rewrites a stale file and
    /// fails once so that the change is seen and committed).
    #[test]
    fn config_docs_are_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
        let want = markdown_reference();
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            std::fs::write(&path, &want).unwrap();
            panic!("docs/config.md was stale and has been regenerated; commit it");
        }
    }

    #[test]
    fn mcp_options_load_and_refuse_what_makes_no_sense() {
        let config = load(
            "[mcp]\nallow_writes = true\nrequests_per_minute = 5\nallowed_origins = \"https://app.example, http://localhost:3000\"\n",
            &[("SOVRA_MCP_ENABLED", "false")],
        )
        .unwrap();
        assert!(config.mcp.allow_writes && !config.mcp.enabled);
        assert_eq!(config.mcp.requests_per_minute, 5);
        assert_eq!(
            config.mcp.origins(),
            ["https://app.example", "http://localhost:3000"]
        );
        assert_eq!(Config::default().mcp.max_request_bytes, 1_048_576);
        assert!(!Config::default().mcp.allow_writes);
        for (text, option) in [
            ("[mcp]\nmax_request_bytes = 10\n", "mcp.max_request_bytes"),
            (
                "[mcp]\nread_object_max_bytes = 0\n",
                "mcp.read_object_max_bytes",
            ),
            (
                "[mcp]\nsession_idle_timeout = 0\n",
                "mcp.session_idle_timeout",
            ),
            (
                "[mcp]\nallowed_origins = \"app.example\"\n",
                "mcp.allowed_origins",
            ),
            (
                "[mcp]\nallowed_origins = \"https://a.example/path\"\n",
                "mcp.allowed_origins",
            ),
            ("[mcp]\nallow_writes = \"yes\"\n", "mcp.allow_writes"),
            (
                "[mcp]\nrequests_per_minute = -1\n",
                "mcp.requests_per_minute",
            ),
        ] {
            let err = load(text, &[]).unwrap_err().to_string();
            assert!(err.contains(option), "{text}: {err}");
        }
        assert!(matches!(
            load("[mcp]\nunknown = 1\n", &[]),
            Err(ConfigError::Unknown(key)) if key == "mcp.unknown"
        ));
    }
}
