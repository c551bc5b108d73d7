//! Start-up and shutdown of `sovra serve`: data directory, database
//! (embedded or external), migrations, keys, the HTTP server, and a graceful
//! stop that finishes in-flight requests before PostgreSQL goes down.

use std::future::Future;
use std::str::FromStr as _;
use std::time::Duration;

use sovra_config::Config;
use sovra_pg::{Cluster, ClusterOptions};

use crate::data_dir::DataDir;
use crate::keys::{self, ProjectKeys};
use crate::{AppState, Tenant, TenantResolver, app};

/// Why Sovra could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::DataDirError),
    #[error("embedded postgresql: {0}")]
    Cluster(#[from] sovra_pg::ClusterError),
    #[error("invalid value for `database.url`: {0}")]
    DatabaseUrl(String),
    #[error("cannot connect to postgresql: {0}")]
    Connect(#[source] sovra_pg::tokio_postgres::Error),
    #[error(transparent)]
    Migrate(#[from] sovra_pg::MigrateError),
    #[error(transparent)]
    Keys(#[from] keys::KeysError),
    #[error("database pool: {0}")]
    Pool(String),
    #[error(transparent)]
    Logins(#[from] sovra_pg::LoginError),
    #[error(
        "cannot log in to postgresql as `{role}` ({purpose}): {source}; Sovra keeps the role's password in the table sovra.login_secrets, so allow password logins for `authenticator` and `supabase_auth_admin` from this host in pg_hba.conf"
    )]
    Login {
        role: &'static str,
        purpose: &'static str,
        #[source]
        source: sovra_pg::tokio_postgres::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("http server: {0}")]
    Http(#[source] std::io::Error),
    #[error("auth: {0}")]
    Auth(String),
    #[error("storage could not start: {0}")]
    Storage(String),
    #[error("realtime could not start: {0}")]
    Realtime(String),
    #[error("tenants: {0}")]
    Platform(String),
    #[error("embedded postgresql exited unexpectedly; see {0}")]
    ClusterDied(String),
}

/// A database Sovra is connected to, and the cluster when it manages one.
pub struct Database {
    /// Connection settings for migrations and administration.
    pub admin: sovra_pg::tokio_postgres::Config,
    /// Connection settings for the request pool.
    pub requests: sovra_pg::tokio_postgres::Config,
    pub cluster: Option<Cluster>,
}

/// Opens the database the configuration names: the external server at
/// `database.url`, or the embedded cluster in the data directory.
pub async fn open_database(config: &Config, data_dir: &DataDir) -> Result<Database, ServeError> {
    if let Some(url) = &config.database.url {
        let parsed = sovra_pg::tokio_postgres::Config::from_str(url)
            .map_err(|err| ServeError::DatabaseUrl(err.to_string()))?;
        let mut parsed = parsed;
        parsed.application_name("sovra");
        // Requests never log in as the URL's user (usually a superuser, who
        // could become any role a token names): they log in as
        // `authenticator`, whose password `build_tenant` provides.
        let mut requests = parsed.clone();
        requests.user(sovra_pg::logins::AUTHENTICATOR);
        return Ok(Database {
            admin: parsed,
            requests,
            cluster: None,
        });
    }
    // PostgreSQL runs as `embedded.system_user` when Sovra is root; that
    // user's group may pass through the otherwise private data directory
    // to reach the cluster's own.
    if nix::unistd::geteuid().is_root()
        && let Ok(Some(user)) = nix::unistd::User::from_name(&config.embedded.system_user)
    {
        data_dir.let_group_through(user.gid)?;
    }
    let mut options = ClusterOptions::new(data_dir.pg_dir());
    options.log_file = data_dir.pg_log();
    options.bin_dir.clone_from(&config.embedded.bin_dir);
    options.tcp_port = config.embedded.port;
    options.system_user.clone_from(&config.embedded.system_user);
    options.start_timeout = Duration::from_secs(config.embedded.start_timeout);
    let cluster = Cluster::start(options).await?;
    Ok(Database {
        admin: cluster.connect_config(sovra_pg::cluster::SUPERUSER, "postgres"),
        // Requests connect as the role that may only switch to the API
        // roles, never as the superuser.
        requests: cluster.connect_config("authenticator", "postgres"),
        cluster: Some(cluster),
    })
}

/// Applies pending migrations with one administrative connection.
pub async fn run_migrations(
    admin: &sovra_pg::tokio_postgres::Config,
) -> Result<sovra_pg::MigrationReport, ServeError> {
    let mut client = sovra_pg::connect_one(admin)
        .await
        .map_err(ServeError::Connect)?;
    Ok(sovra_pg::migrate(&mut client).await?)
}

/// Auth's settings from the configuration.
pub fn auth_config(config: &Config) -> Result<sovra_auth::AuthConfig, ServeError> {
    let a = &config.auth;
    let external = config.public_url(config.listen_addr());
    let mut out = sovra_auth::AuthConfig::new(&external, config.data_dir.join("mailbox"));
    if let Some(site) = &a.site_url {
        out.site_url = site.trim_end_matches('/').to_owned();
    }
    out.redirect_urls = a.redirect_url_list();
    let secs = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    out.jwt_expiry = secs(a.jwt_expiry);
    out.disable_signup = a.disable_signup;
    out.email_autoconfirm = a.email_autoconfirm;
    out.phone_autoconfirm = a.phone_autoconfirm;
    out.anonymous_users = a.anonymous_users;
    out.password = sovra_auth::password::Policy::parse(
        usize::try_from(a.password_min_length).unwrap_or(6),
        &a.password_requirements,
    )
    .map_err(ServeError::Auth)?;
    out.refresh_reuse_interval = secs(a.refresh_token_reuse_interval);
    out.session_timebox = secs(a.session_timebox);
    out.session_inactivity = secs(a.session_inactivity_timeout);
    out.otp_expiry = secs(a.otp_expiry);
    out.email_max_frequency = secs(a.email_max_frequency);
    out.secure_password_change = a.secure_password_change;
    out.double_confirm_changes = a.double_confirm_changes;
    out.invite_only = a.invite_only;
    out.mfa_max_factors = secs(a.mfa_max_factors);
    out.trusted_proxies = a
        .trusted_proxy_list()
        .iter()
        .filter_map(|p| sovra_auth::limits::Cidr::parse(p))
        .collect();
    out.hash_concurrency = usize::try_from(a.hash_concurrency).unwrap_or(0);
    out.hash_queue = usize::try_from(a.hash_queue).unwrap_or(0);
    out.smtp_url.clone_from(&a.smtp_url);
    out.smtp_from.clone_from(&a.smtp_from);
    out.templates_dir.clone_from(&a.templates_dir);
    out.key_file = Some(config.data_dir.join("auth.key"));
    out.shared_secret = config.jwt.secret.clone().map(sovra_auth::secret::Redacted);
    out.code_attempts = u32::try_from(a.code_attempts).unwrap_or(5);
    out.manual_linking = a.manual_linking_enabled;
    let w = &a.webauthn;
    out.webauthn = sovra_auth::passkeys::WebAuthnConfig {
        passkeys: w.passkeys,
        mfa: w.mfa,
        rp_id: Some(w.rp_id.trim().to_owned()).filter(|id| !id.is_empty()),
        rp_origins: w.origin_list(),
        rp_display_name: w.rp_display_name.clone(),
        challenge_expiry: secs(w.challenge_expiry),
        max_passkeys: secs(w.max_passkeys),
    };
    let max = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let r = &a.rate_limit;
    out.limits.sign_in.max = max(r.sign_in);
    out.limits.verify.max = max(r.verify);
    out.limits.refresh.max = max(r.token_refresh);
    out.limits.otp.max = max(r.otp);
    out.limits.email_sent.max = max(r.email_sent);
    out.limits.anonymous.max = max(r.anonymous);
    out.shared_limits = config.shared_state_in_postgres();
    for (name, hook) in a.hook.all() {
        if !hook.enabled {
            continue;
        }
        let Some(point) = sovra_auth::hooks::HookName::ALL
            .into_iter()
            .find(|n| n.config_name() == name)
        else {
            continue;
        };
        *out.hooks.point_mut(point) = Some(sovra_auth::hooks::HookPoint {
            uri: hook.uri.trim().to_owned(),
            secrets: sovra_auth::secret::Redacted(hook.secrets.clone()),
        });
    }
    out.external = external_providers(&a.external)?;
    out.oauth_server.consent_url = a.oauth_server.consent_url.trim().to_owned();
    out.oauth_server.dynamic_registration = a.oauth_server.dynamic_registration;
    out.hooks.pg_timeout_ms = a.hook.pg_timeout_ms;
    out.hooks.http_timeout_ms = a.hook.http_timeout_ms;
    Ok(out)
}

/// The identity providers of `auth.external.*`.
pub fn external_providers(
    e: &sovra_config::AuthExternal,
) -> Result<sovra_auth::external::ExternalConfig, ServeError> {
    use sovra_auth::external::{OAuthProvider, OidcKind, OidcProvider, ProfileKind};
    use sovra_auth::secret::Redacted;
    let secret = |s: &str| (!s.trim().is_empty()).then(|| Redacted(s.trim().to_owned()));
    let oidc = |p: &sovra_config::ExternalProvider, issuer: &str, kind: OidcKind| {
        p.enabled.then(|| OidcProvider {
            issuer: issuer.trim().trim_end_matches('/').to_owned(),
            client_ids: p.client_ids(),
            skip_nonce_check: p.skip_nonce_check,
            secret: secret(&p.secret),
            kind,
        })
    };
    let or = |url: &str, default: &str| {
        let url = url.trim().trim_end_matches('/');
        if url.is_empty() { default } else { url }.to_owned()
    };
    let oauth = |p: &sovra_config::OAuthOption, kind: ProfileKind, default: &str, api: &str| {
        p.enabled.then(|| {
            let url = or(&p.url, default);
            OAuthProvider {
                kind,
                client_id: p.client_id.trim().to_owned(),
                secret: Redacted(p.secret.trim().to_owned()),
                api_url: format!("{url}{api}"),
                url,
            }
        })
    };
    let github = &e.github;
    let apple = &e.apple;
    let apple_key = if apple.private_key.trim().is_empty() {
        None
    } else {
        Some(
            sovra_auth::external::AppleKey::new(&apple.team_id, &apple.key_id, &apple.private_key)
                .map_err(|why| {
                    ServeError::Auth(format!("auth.external.apple.private_key: {why}"))
                })?,
        )
    };
    Ok(sovra_auth::external::ExternalConfig {
        google: oidc(&e.google, "https://accounts.google.com", OidcKind::Standard),
        keycloak: oidc(&e.keycloak, &e.keycloak.url, OidcKind::Standard),
        azure: oidc(
            &e.azure,
            &or(
                &e.azure.url,
                "https://login.microsoftonline.com/common/v2.0",
            ),
            OidcKind::Azure,
        ),
        apple: apple.enabled.then(|| OidcProvider {
            issuer: or(&apple.url, "https://appleid.apple.com"),
            client_ids: apple.client_ids(),
            skip_nonce_check: apple.skip_nonce_check,
            secret: None,
            kind: OidcKind::Apple(apple_key),
        }),
        github: github.enabled.then(|| OAuthProvider {
            kind: ProfileKind::Github,
            client_id: github.client_id.trim().to_owned(),
            secret: Redacted(github.secret.trim().to_owned()),
            url: github.url.trim().to_owned(),
            api_url: github.api_url.trim().to_owned(),
        }),
        gitlab: oauth(
            &e.gitlab,
            ProfileKind::Gitlab,
            "https://gitlab.com",
            "/api/v4",
        ),
        discord: oauth(
            &e.discord,
            ProfileKind::Discord,
            "https://discord.com",
            "/api",
        ),
    })
}

/// Connects once as `login` (a pool's role) and checks that the session is
/// not a superuser's.
async fn check_login(
    login: &sovra_pg::tokio_postgres::Config,
    role: &'static str,
    purpose: &'static str,
) -> Result<(), ServeError> {
    let failed = |source| ServeError::Login {
        role,
        purpose,
        source,
    };
    let client = sovra_pg::connect_one(login).await.map_err(failed)?;
    let row = client
        .query_one(
            "select session_user::text, rolsuper or rolbypassrls from pg_catalog.pg_roles where rolname = session_user",
            &[],
        )
        .await
        .map_err(failed)?;
    if row.get::<_, String>(0) != role || row.get::<_, bool>(1) {
        return Err(sovra_pg::LoginError::Privileged { role }.into());
    }
    Ok(())
}

fn wrong_password(err: &ServeError) -> bool {
    matches!(err, ServeError::Login { source, .. }
        if source.code() == Some(&sovra_pg::tokio_postgres::error::SqlState::INVALID_PASSWORD))
}

/// The connection settings of the request pool (`authenticator`) and the
/// auth pool (`supabase_auth_admin`): `requests` with each role's user and
/// password, prepared by `service` and checked by logging in once.
async fn pool_logins(
    requests: sovra_pg::tokio_postgres::Config,
    service: &sovra_pg::tokio_postgres::Config,
) -> Result<
    (
        sovra_pg::tokio_postgres::Config,
        sovra_pg::tokio_postgres::Config,
    ),
    ServeError,
> {
    use sovra_pg::logins::{AUTH_ADMIN, AUTHENTICATOR};
    let admin = sovra_pg::connect_one(service)
        .await
        .map_err(ServeError::Connect)?;
    let configs = |logins: &sovra_pg::Logins| {
        let mut request_login = requests.clone();
        request_login
            .user(AUTHENTICATOR)
            .password(logins.authenticator.as_str());
        let mut auth_login = requests.clone();
        auth_login
            .user(AUTH_ADMIN)
            .password(logins.auth_admin.as_str());
        (request_login, auth_login)
    };
    let check = |(request_login, auth_login): (
        sovra_pg::tokio_postgres::Config,
        sovra_pg::tokio_postgres::Config,
    )| async move {
        check_login(&request_login, AUTHENTICATOR, "requests").await?;
        check_login(&auth_login, AUTH_ADMIN, "auth").await?;
        Ok::<_, ServeError>((request_login, auth_login))
    };
    let logins = sovra_pg::logins::prepare(&admin, false).await?;
    match check(configs(&logins)).await {
        // Another database of the cluster set the roles' passwords since:
        // set this database's again.
        Err(err) if wrong_password(&err) => {
            let logins = sovra_pg::logins::prepare(&admin, true).await?;
            check(configs(&logins)).await
        }
        other => other,
    }
}

/// Builds the single tenant of this server: its pools, keys and services
/// (the REST schema cache is loaded before this returns). `requests` says
/// where the database is: the request pool logs in there as
/// `authenticator` and the auth pool as `supabase_auth_admin`, neither a
/// superuser, with the passwords `service` (the superuser of the embedded
/// cluster, or the user of `database.url`) prepares.
pub async fn build_tenant(
    config: &Config,
    requests: sovra_pg::tokio_postgres::Config,
    service: sovra_pg::tokio_postgres::Config,
    keys: ProjectKeys,
) -> Result<Tenant, ServeError> {
    let (requests, auth_db) = pool_logins(requests, &service).await?;
    let auth = auth_config(config)?;
    let login = requests.clone();
    let tenant = build_services(
        config,
        TenantParts {
            id: "default".to_owned(),
            requests,
            auth_db,
            service,
            keys,
            auth,
            quotas: crate::tenant::TenantQuotas::default(),
        },
    )
    .await?;
    attach_replicas(config, &tenant, &login)?;
    Ok(tenant)
}

/// Gives the default tenant's REST service the read replicas of
/// `database.read_urls` (pools logging in as `login`, the request pool's
/// login, on each replica's host and port). Tenants other than the default
/// one run on their own primary: their databases need not be on the
/// replicated server.
fn attach_replicas(
    config: &Config,
    tenant: &Tenant,
    login: &sovra_pg::tokio_postgres::Config,
) -> Result<(), ServeError> {
    let urls = config.database.read_url_list();
    if urls.is_empty() {
        return Ok(());
    }
    let mut pools = Vec::new();
    for url in &urls {
        let replica = sovra_rest::replicas::replica_config(login, url).map_err(ServeError::Pool)?;
        let pool = sovra_pg::pool::build(
            replica,
            config.database.pool_size,
            // A replica that does not answer soon is skipped, not waited on.
            Duration::from_secs(2).min(Duration::from_secs(config.database.connect_timeout)),
        )
        .map_err(|err| ServeError::Pool(err.to_string()))?;
        pools.push((sovra_rest::replicas::replica_name(url), pool));
    }
    tracing::info!(replicas = pools.len(), "reads may go to read replicas");
    tenant
        .rest
        .attach_replicas(sovra_rest::replicas::Replicas::start(
            tenant.pool.clone(),
            pools,
            sovra_rest::replicas::ReplicaSettings {
                max_lag: Duration::from_secs(config.database.read_max_lag),
                wait: Duration::from_millis(config.database.read_wait_ms),
                check_interval: Duration::from_secs(1),
                tenant: tenant.id.clone(),
            },
        ));
    Ok(())
}

/// What [`build_services`] builds a tenant from.
pub struct TenantParts {
    /// The tenant's name (`default` for the one at the URL root): its
    /// storage prefix and its NATS subject.
    pub id: String,
    /// The request pool's login (a role that may switch to the API roles).
    pub requests: sovra_pg::tokio_postgres::Config,
    /// The auth pool's login (owner of the `auth` tables).
    pub auth_db: sovra_pg::tokio_postgres::Config,
    /// An administrative login on the tenant's database (change feed).
    pub service: sovra_pg::tokio_postgres::Config,
    pub keys: ProjectKeys,
    pub auth: sovra_auth::AuthConfig,
    /// Its quotas (none for the default tenant).
    pub quotas: crate::tenant::TenantQuotas,
}

/// How long after a tenant's services a tenant's HTTP-from-SQL worker and
/// outbox publisher start ([`sovra_net::NetService::start_after`]): their
/// three connections would otherwise start beside the first request of a
/// cold tenant and take the CPU it needs.
pub const NET_START_DELAY: Duration = Duration::from_secs(1);

/// Builds a tenant's pools and services from logins that are ready.
pub async fn build_services(config: &Config, parts: TenantParts) -> Result<Tenant, ServeError> {
    let TenantParts {
        id,
        requests,
        auth_db,
        service,
        keys,
        auth: mut auth_settings,
        quotas,
    } = parts;
    auth_settings.limits.email_sent_project.max = quotas.mails_per_hour;
    let rest = sovra_rest::RestService::start(
        sovra_rest::RestConfig {
            schemas: config.rest.schema_list(),
            max_rows: (config.rest.max_rows > 0)
                .then(|| i64::try_from(config.rest.max_rows).unwrap_or(i64::MAX)),
            plan_enabled: config.rest.plan_enabled,
            openapi_mode: sovra_rest::OpenApiMode::from_config(&config.rest.openapi_mode),
            idempotency_retention: u32::try_from(config.rest.idempotency_retention)
                .unwrap_or(u32::MAX),
        },
        requests.clone(),
        Duration::from_secs(config.database.connect_timeout),
    );
    let pool = sovra_pg::pool::build(
        requests,
        config.database.pool_size,
        Duration::from_secs(config.database.connect_timeout),
    )
    .map_err(|err| ServeError::Pool(err.to_string()))?;
    // Auth works on its own tables as their owner, logged in as that role:
    // app triggers on auth.users never run in a superuser's session.
    let auth_pool = sovra_pg::pool::build(
        auth_db,
        config.database.pool_size.clamp(2, 32),
        Duration::from_secs(config.database.connect_timeout),
    )
    .map_err(|err| ServeError::Pool(err.to_string()))?;
    let auth = sovra_auth::AuthService::new(auth_settings, auth_pool).map_err(ServeError::Auth)?;
    // At once, not one after the other (a cold tenant's first request
    // waits for all three): the schema cache load, auth's API keys, and
    // the request pool's first connection, which the request then uses,
    // with the REST prologue already prepared and run once on it.
    let prewarm = async {
        match pool.get().await {
            Ok(client) => {
                if let Err(err) = sovra_rest::warm_connection(client).await {
                    tracing::debug!(error = %err, "preparing the REST prologue failed");
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "opening the first request connection failed");
            }
        }
    };
    let (rest, keys_loaded, ()) = tokio::join!(rest, auth.reload_api_keys(), prewarm);
    if let Err(err) = keys_loaded {
        tracing::warn!(error = %err.message, "could not load API keys");
    }
    let mut storage_settings = storage_config(config);
    // S3 access keys' secrets derive from the project's service key.
    storage_settings.s3.key_root = keys.api.service_role.clone();
    let storage = sovra_storage::StorageService::new(storage_settings, &id, pool.clone())
        .map_err(ServeError::Storage)?;
    let keyset = std::sync::Arc::new(keys.keyset);
    let verify_keys = keyset.clone();
    let opaque_keys = keys.api.clone();
    let verifier: sovra_realtime::Verifier = std::sync::Arc::new(move |token: &str| {
        // An opaque key as `access_token` (supabase-js without a session).
        let token = if crate::opaque_keys::looks_opaque(token) {
            opaque_keys
                .jwt_for_opaque(token)
                .ok_or_else(|| "Invalid API key".to_owned())?
        } else {
            token
        };
        let verified = verify_keys
            .verify(token, crate::gateway::now())
            .map_err(|err| err.to_string())?;
        if crate::gateway::claims_contain_nul(&verified.claims) {
            return Err(crate::gateway::NUL_CLAIMS.to_owned());
        }
        Ok(sovra_realtime::Principal {
            role: verified.role,
            claims: verified.claims,
        })
    });
    let mut realtime_settings = realtime_config(config);
    realtime_settings.tenant_events_per_second = quotas.realtime_events_per_second;
    realtime_settings.tenant.clone_from(&quotas.metrics_label);
    let realtime = sovra_realtime::RealtimeService::new(realtime_settings, pool.clone(), verifier);
    realtime.set_feed_source(service.clone());
    realtime.set_revalidator(revalidator(auth.pool().clone()));
    if !config.realtime.nats_url.is_empty() {
        let subject = format!("{}.{id}", config.realtime.nats_subject);
        realtime
            .attach_nats(&config.realtime.nats_url, &subject)
            .await
            .map_err(|err| {
                ServeError::Realtime(format!(
                    "{err} (realtime.nats_url = {})",
                    sovra_config::urls_without_passwords(&config.realtime.nats_url)
                ))
            })?;
    }
    // Delivery starts a moment later, off a cold tenant's first request.
    let net = sovra_net::NetService::start_after(
        sovra_net::NetSettings::from_config(config, &id),
        service.clone(),
        NET_START_DELAY,
    );
    Ok(Tenant {
        id,
        storage,
        realtime,
        net,
        pool,
        keys: keyset,
        api_keys: keys.api,
        require_apikey: config.server.require_apikey,
        mcp: crate::mcp::McpTenant::new(config),
        rest,
        auth,
        in_progress: (quotas.max_concurrent_requests > 0)
            .then(|| crate::tenants::share::Gate::new(quotas.max_concurrent_requests)),
        waiting: std::sync::atomic::AtomicUsize::new(0),
        quotas,
        storage_used: std::sync::Mutex::new(None),
        cron: crate::cron::CronScheduler::start(
            service.clone(),
            crate::cron::CronSettings::from_config(config),
        ),
        admin: service,
    })
}

/// Answers the realtime service which credentials behind its open sockets
/// are no longer valid: sessions that ended (signed out, expired, or whose
/// user was banned or deleted) and revoked API keys. One round trip for
/// all of them.
fn revalidator(auth_pool: sovra_pg::Pool) -> sovra_realtime::Revalidator {
    use sovra_realtime::Credential;
    fn ids(list: &[(uuid::Uuid, Credential)]) -> Vec<uuid::Uuid> {
        list.iter().map(|(id, _)| *id).collect()
    }
    std::sync::Arc::new(move |credentials: Vec<Credential>| {
        let pool = auth_pool.clone();
        Box::pin(async move {
            let mut sessions = Vec::new();
            let mut keys = Vec::new();
            let mut revoked = std::collections::HashSet::new();
            for credential in credentials {
                let (list, id) = match &credential {
                    Credential::Session(id) => (&mut sessions, id),
                    Credential::ApiKey(id) => (&mut keys, id),
                };
                match uuid::Uuid::parse_str(id) {
                    Ok(uuid) => list.push((uuid, credential.clone())),
                    // Not an id Sovra issued: nothing it names is valid.
                    Err(_) => {
                        revoked.insert(credential);
                    }
                }
            }
            let client = pool.get().await.map_err(|err| err.to_string())?;
            let row = client
                .query_one(
                    "select
                       array(select s.id from auth.sessions s join auth.users u on u.id = s.user_id
                             where s.id = any($1)
                               and (s.not_after is null or s.not_after > now())
                               and u.deleted_at is null
                               and (u.banned_until is null or u.banned_until <= now())),
                       array(select k.id from sovra.api_keys k
                             where k.id = any($2) and k.revoked_at is null)",
                    &[&ids(&sessions), &ids(&keys)],
                )
                .await
                .map_err(|err| err.to_string())?;
            let live_sessions: Vec<uuid::Uuid> = row.get(0);
            let live_keys: Vec<uuid::Uuid> = row.get(1);
            for (list, live) in [(sessions, live_sessions), (keys, live_keys)] {
                for (id, credential) in list {
                    if !live.contains(&id) {
                        revoked.insert(credential);
                    }
                }
            }
            Ok(revoked)
        })
    })
}

/// The realtime settings of the configuration.
fn realtime_config(config: &Config) -> sovra_realtime::RealtimeConfig {
    let realtime = &config.realtime;
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    sovra_realtime::RealtimeConfig {
        max_connections: size(realtime.max_connections),
        max_channels_per_connection: size(realtime.max_channels_per_connection),
        max_events_per_second: u32::try_from(realtime.max_events_per_second).unwrap_or(u32::MAX),
        max_frame_bytes: size(realtime.max_frame_size),
        outbound_queue_bytes: size(realtime.outbound_queue_bytes),
        slow_consumer_timeout: Duration::from_secs(realtime.slow_consumer_timeout),
        max_bindings_per_channel: size(realtime.max_bindings_per_channel),
        max_presence_bytes: size(realtime.max_presence_bytes),
        revalidate_interval: Duration::from_secs(realtime.revalidate_interval),
        idle_timeout: Duration::from_secs(realtime.idle_timeout),
        max_slot_lag_bytes: realtime.max_slot_lag,
        catchup_window: Duration::from_secs(realtime.catchup_window),
        catchup_max_changes: size(realtime.catchup_max_changes),
        catchup_max_bytes: size(realtime.catchup_max_bytes),
        feed_batch_bytes: size(realtime.feed_batch_bytes),
        ..sovra_realtime::RealtimeConfig::default()
    }
}

/// The storage settings of the configuration.
pub(crate) fn storage_config(config: &Config) -> sovra_storage::StorageConfig {
    let storage = &config.storage;
    let backend = if storage.backend == "s3" {
        sovra_storage::BackendConfig::S3 {
            endpoint: storage.s3.endpoint.clone(),
            region: storage.s3.region.clone(),
            bucket: storage.s3.bucket.clone().unwrap_or_default(),
            access_key_id: storage.s3.access_key_id.clone(),
            secret_access_key: storage.s3.secret_access_key.clone(),
            path_style: storage.s3.force_path_style,
        }
    } else {
        sovra_storage::BackendConfig::Fs {
            root: storage
                .path
                .clone()
                .unwrap_or_else(|| config.data_dir.join("storage")),
        }
    };
    sovra_storage::StorageConfig {
        backend,
        file_size_limit: storage.file_size_limit,
        upload_expiry: Duration::from_secs(storage.upload_expiry),
        io_threads: usize::try_from(storage.io_threads).unwrap_or(16),
        io_wait: Duration::from_secs(storage.io_wait),
        s3: sovra_storage::s3::S3Config {
            enabled: storage.s3_protocol.enabled,
            region: storage.s3_protocol.region.clone(),
            key_root: String::new(),
        },
        image: image_config(config),
    }
}

/// The image transformation settings; renderings are cached under
/// `<data_dir>/cache/images`.
fn image_config(config: &Config) -> sovra_storage::ImageConfig {
    let image = &config.storage.image;
    sovra_storage::ImageConfig {
        enabled: image.enabled,
        max_dimension: u32::try_from(image.max_dimension).unwrap_or(2500),
        max_pixels: image.max_pixels,
        max_source_size: image.max_source_size,
        concurrency: usize::try_from(image.concurrency).unwrap_or(2),
        cache_dir: Some(config.data_dir.join("cache").join("images")),
        cache_size: image.cache_size,
    }
}

/// Deletes expired resumable uploads every ten minutes.
pub fn spawn_upload_sweeper(tenants: TenantResolver) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            for tenant in tenants.all() {
                match tenant.storage.sweep_expired_uploads().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(uploads = n, "deleted expired resumable uploads"),
                    Err(err) => tracing::debug!(error = %err, "upload sweep failed"),
                }
            }
        }
    });
}

/// Reloads every tenant's API keys every 30 s, so that keys created or
/// revoked through another instance take effect here too.
pub fn spawn_api_key_refresh(tenants: TenantResolver) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        tick.tick().await;
        loop {
            tick.tick().await;
            for tenant in tenants.all() {
                if let Err(err) = tenant.auth.reload_api_keys().await {
                    tracing::debug!(error = %err.message, "API key reload failed");
                }
            }
        }
    });
}

/// Runs `sovra serve` until `shutdown` resolves (or the embedded cluster
/// dies), then drains requests and stops PostgreSQL.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let started = std::time::Instant::now();
    let data_dir = DataDir::open(&config.data_dir)?;
    let database = open_database(&config, &data_dir).await?;
    let Database {
        admin,
        requests,
        cluster,
    } = database;
    let result = serve_with(
        &config,
        &data_dir,
        &admin,
        requests,
        cluster.as_ref(),
        shutdown,
        started,
    )
    .await;
    if let Some(cluster) = cluster {
        cluster
            .stop(Duration::from_secs(config.server.shutdown_timeout.max(5)))
            .await;
    }
    result
}

async fn serve_with(
    config: &Config,
    data_dir: &DataDir,
    admin: &sovra_pg::tokio_postgres::Config,
    requests: sovra_pg::tokio_postgres::Config,
    cluster: Option<&Cluster>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: std::time::Instant,
) -> Result<(), ServeError> {
    let report = run_migrations(admin).await?;
    let mut keys = keys::load_or_create(&data_dir.keys_file(), config)?;
    let first_run = keys.created;
    let api = keys.api.clone();
    let platform_key =
        crate::platform::load_or_create(&data_dir.platform_key_file()).map_err(|err| {
            ServeError::Platform(format!("{}: {err}", data_dir.platform_key_file().display()))
        })?;
    let platform = std::sync::Arc::new(
        crate::tenants::Platform::new(config, admin.clone(), &platform_key.key)
            .map_err(ServeError::Platform)?,
    );
    // The tenants' secrets: a wrong key stops here; plaintext left by an
    // earlier version, and what an older key sealed, is sealed now.
    let sealed = platform
        .seal_registry()
        .await
        .map_err(ServeError::Platform)?;
    if sealed.sealed + sealed.rekeyed > 0 {
        tracing::info!(
            sealed = sealed.sealed,
            rekeyed = sealed.rekeyed,
            "tenant secrets sealed under the current tenant secrets key"
        );
    }
    for damaged in &sealed.damaged {
        tracing::error!(%damaged, "a tenant's sealed secret does not open: that tenant is not served until it is restored");
    }
    // The default tenant refuses the tokens of every other tenant (their
    // `ref`), whatever secrets they were configured with.
    platform
        .refresh_names()
        .await
        .map_err(ServeError::Platform)?;
    keys.keyset = keys.keyset.with_foreign_refs(platform.ref_guard());
    let tenant = build_tenant(config, requests, admin.clone(), keys).await?;
    let mut tenants = TenantResolver::single(tenant);
    tenants.set_platform(platform.clone());
    // Every tenant database is migrated in the background; `/ready` says
    // how many are left.
    platform.spawn_idle_sweep(Duration::from_secs(config.server.tenant_idle_timeout));
    platform.spawn_size_check(Duration::from_secs(
        config.server.tenant_database_check_interval,
    ));
    let upgrading = platform.clone();
    tokio::spawn(async move {
        if let Err(err) = upgrading.upgrade(4).await {
            tracing::error!(error = %err, "tenant upgrade incomplete");
        }
    });
    spawn_api_key_refresh(tenants.clone());
    spawn_upload_sweeper(tenants.clone());
    // The change feed starts now, so that changes made before the first
    // subscriber arrives are read in order (tests start it on first join).
    for tenant in tenants.all() {
        tenant.realtime.start_feed(admin.clone());
    }
    let state = AppState::from_config(tenants.clone(), config).with_platform(platform.clone());
    if config.metrics_exposed() {
        tracing::warn!(
            listen = %config.server.listen,
            "/metrics is open to every client that reaches {}: set `metrics.token` (SOVRA_METRICS_TOKEN) or block /metrics in front of Sovra",
            config.server.listen
        );
    }
    let draining = state.draining.clone();
    let app = app(state);

    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(ServeError::Http)?;
    let url = config.public_url(bound);
    for tenant in tenants.all() {
        tenant.auth.set_external_url(&url);
    }
    platform.set_public_url(&url);
    tracing::info!(
        %url,
        startup_ms = started.elapsed().as_millis() as u64,
        migrations_applied = report.applied.len(),
        pgvector = report.vector,
        "sovra is ready"
    );
    print_banner(&url, &api, first_run, data_dir, cluster.is_some());
    print_auth_banner(&auth_banner_lines(config, data_dir.root()));
    if platform_key.created {
        print_platform_key(&platform_key.key, data_dir);
    }

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        let _ = drain_rx.await;
    };
    let server = serve_http(listener, app, HttpOptions::from_config(config), graceful);
    let server = tokio::spawn(server);
    let died = async {
        match cluster {
            Some(cluster) => cluster.exited().await,
            None => std::future::pending().await,
        }
    };
    let cluster_died = tokio::select! {
        () = shutdown => false,
        () = died => true,
    };
    // Drain: `/ready` answers 503 at once; requests are still served for
    // `server.drain_delay` so that a load balancer stops sending first.
    draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let delay = Duration::from_secs(config.server.drain_delay);
    if !cluster_died && !delay.is_zero() {
        tracing::info!(
            seconds = delay.as_secs(),
            "draining: /ready answers 503; still serving until the delay ends (a second signal skips it)"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown_signal() => {}
        }
    }
    tracing::info!(
        "shutting down: realtime clients told to reconnect, finishing in-flight requests"
    );
    for tenant in tenants.all() {
        tenant.realtime.drain();
        tenant.realtime.shutdown().await;
    }
    let _ = drain_tx.send(());
    let timeout = Duration::from_secs(config.server.shutdown_timeout);
    match tokio::time::timeout(timeout, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => return Err(ServeError::Http(err)),
        Ok(Err(join)) => return Err(ServeError::Http(std::io::Error::other(join))),
        Err(_) => tracing::warn!(?timeout, "in-flight requests did not finish in time"),
    }
    if cluster_died {
        return Err(ServeError::ClusterDied(
            data_dir.pg_log().display().to_string(),
        ));
    }
    Ok(())
}

/// Settings of the HTTP listener.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// How long a client has to send a request's headers, or an idle
    /// connection the first byte of its next request.
    pub header_read_timeout: Duration,
    /// The cap on one client's open connections, if any
    /// (`server.max_connections_per_client`).
    pub per_client: Option<crate::connections::ClientConnections>,
}

impl HttpOptions {
    pub fn from_config(config: &Config) -> HttpOptions {
        let per_client = usize::try_from(config.server.max_connections_per_client)
            .ok()
            .filter(|limit| *limit > 0)
            .map(|limit| {
                let proxies = config
                    .auth
                    .trusted_proxy_list()
                    .iter()
                    .filter_map(|p| sovra_auth::limits::Cidr::parse(p))
                    .collect();
                crate::connections::ClientConnections::new(limit, proxies)
            });
        HttpOptions {
            header_read_timeout: Duration::from_secs(config.server.header_read_timeout),
            per_client,
        }
    }
}

/// Serves `app` on `listener` (HTTP/1.1 with upgrades for WebSockets, and
/// HTTP/2 with prior knowledge) until `shutdown` resolves; then stops
/// accepting, lets each connection finish its requests, and returns when
/// the last one has closed.
///
/// Unlike `axum::serve`, a connection must send the headers of each
/// request within `header_read_timeout` (hyper's own timer, which covers
/// WebSocket handshakes too), and a new connection its first byte, or it
/// is closed: idle or trickling connections cannot pile up. The client's
/// address is available to handlers as `ConnectInfo<SocketAddr>`.
pub async fn serve_http<S>(
    listener: tokio::net::TcpListener,
    app: S,
    options: HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), std::io::Error>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt as _;

    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a little rather than spin.
                    tracing::warn!(error = %err, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // One client may not hold more than its share of connections:
        // beyond it, the connection is closed before anything is read.
        let slot = match options.per_client.as_ref().map(|cap| cap.admit(peer.ip())) {
            Some(Err(())) => {
                metrics::counter!("sovra_http_connections_refused_total").increment(1);
                tracing::debug!(peer = %peer.ip(), "connection refused: the client holds its maximum of open connections");
                drop(stream);
                continue;
            }
            Some(Ok(slot)) => slot,
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut closing = closing_rx.clone();
        let header_read_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            // Until the first byte, hyper's version detection has no timer.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_read_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            // hyper's header-read timer is HTTP/1 only; `activity` lets the
            // watchdog below close an HTTP/2 (h2c) connection that starts
            // no request in time as well.
            let activity = std::sync::Arc::new(Activity::default());
            let service = tower::service_fn({
                let activity = activity.clone();
                move |request: axum::http::Request<hyper::body::Incoming>| {
                    let in_flight = InFlight::start(&activity, request.method());
                    let mut request = request.map(axum::body::Body::new);
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let app = app.clone();
                    async move {
                        let response = app.oneshot(request).await?;
                        Ok::<_, std::convert::Infallible>(response.map(|body| {
                            axum::body::Body::new(CountedBody {
                                body,
                                _in_flight: in_flight,
                            })
                        }))
                    }
                }
            });
            let service = hyper_util::service::TowerToHyperService::new(service);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .enable_connect_protocol();
            // The client's place goes with the socket, into an upgrade too,
            // and is given back when the socket closes.
            let stream = crate::connections::Counted::new(stream, slot);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let idle = activity.idle_for(header_read_timeout);
            let idled = tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::trace!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                _ = closing.wait_for(|closing| *closing) => false,
                () = idle => true,
            };
            connection.as_mut().graceful_shutdown();
            if idled {
                // Nothing in flight: what the connection still owes (a
                // GOAWAY) goes out, and a request that never completed its
                // headers does not keep it open.
                while tokio::time::timeout(header_read_timeout, connection.as_mut())
                    .await
                    .is_err()
                {
                    if activity.in_flight() == 0 {
                        return;
                    }
                }
                return;
            }
            let _ = connection.await;
            drop(closing);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    drop(closing_rx);
    // Every connection task holds a receiver until it ends.
    closing_tx.closed().await;
    Ok(())
}

/// What one connection is doing, for its idle watchdog: requests in
/// flight (from complete headers until the response body is dropped), how
/// many have started, and whether one took the connection over (an HTTP/2
/// extended CONNECT for a WebSocket, which has its own idle handling).
#[derive(Default)]
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    started: std::sync::atomic::AtomicU64,
    upgraded: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once a whole `timeout` has passed with nothing in flight
    /// and no request started: the connection is idle, or a client is
    /// holding it with headers it never finishes. Checked once per
    /// `timeout`, so it fires between one and two timeouts after the last
    /// activity.
    async fn idle_for(&self, timeout: Duration) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            let started = self.started.load(SeqCst);
            tokio::time::sleep(timeout).await;
            if self.in_flight() == 0
                && self.started.load(SeqCst) == started
                && !self.upgraded.load(SeqCst)
            {
                return;
            }
        }
    }
}

/// One request counted in [`Activity::in_flight`] until dropped.
struct InFlight(std::sync::Arc<Activity>);

impl InFlight {
    fn start(activity: &std::sync::Arc<Activity>, method: &axum::http::Method) -> InFlight {
        use std::sync::atomic::Ordering::SeqCst;
        activity.in_flight.fetch_add(1, SeqCst);
        activity.started.fetch_add(1, SeqCst);
        if method == axum::http::Method::CONNECT {
            activity.upgraded.store(true, SeqCst);
        }
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A response body that keeps its request in flight while it streams.
struct CountedBody {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl http_body::Body for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[allow(clippy::print_stdout)]
fn print_banner(
    url: &str,
    api: &keys::ApiKeys,
    first_run: bool,
    data_dir: &DataDir,
    embedded: bool,
) {
    println!();
    println!("  Sovra {} is running", env!("CARGO_PKG_VERSION"));
    println!();
    println!("  API URL       {url}");
    println!("  REST          {url}/rest/v1");
    println!("  Auth          {url}/auth/v1");
    println!("  Storage       {url}/storage/v1");
    println!(
        "  Realtime      {}/realtime/v1",
        url.replacen("http", "ws", 1)
    );
    println!("  Health        {url}/health  {url}/ready  {url}/metrics");
    println!("  Data dir      {}", data_dir.root().display());
    if embedded {
        println!(
            "  PostgreSQL    embedded, socket in {}",
            data_dir.pg_dir().display()
        );
    }
    println!();
    if first_run {
        println!(
            "  First start: new keys were made and saved in {}",
            data_dir.keys_file().display()
        );
        println!("  anon key      {}", api.anon);
        println!("  service_role  {}", api.service_role);
        println!("  (the service_role key bypasses row-level security: keep it on servers only)");
    } else {
        println!("  Keys: run `sovra keys` to print them.");
    }
    println!();
}

/// What the banner says about sign-ups: whether email confirmation is on,
/// where mail goes, and how to change it (Supabase's local CLI starts with
/// confirmations off; Sovra starts with them on, as a hosted project).
pub fn auth_banner_lines(config: &Config, data_dir: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    if config.auth.email_autoconfirm {
        lines.push(
            "  Email confirm off: sign-ups get a session at once (auth.email_autoconfirm = true)"
                .to_owned(),
        );
    } else {
        lines.push(
            "  Email confirm on: sign-ups must open the link or code mailed to them".to_owned(),
        );
        lines.push(
            "                 to skip it, as Supabase's local CLI does: SOVRA_AUTH_EMAIL_AUTOCONFIRM=true"
                .to_owned(),
        );
    }
    match &config.auth.smtp_url {
        Some(_) => lines.push("  Mail          sent through auth.smtp_url".to_owned()),
        None => lines.push(format!(
            "  Mail          kept in {} (no SMTP server set): read it with `sovra mail`",
            data_dir.join("mailbox").display()
        )),
    }
    lines
}

#[allow(clippy::print_stdout)]
fn print_auth_banner(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
    println!();
}

#[allow(clippy::print_stdout)]
fn print_platform_key(key: &str, data_dir: &DataDir) {
    println!("  Platform key  {key}");
    println!(
        "  (creates and deletes tenants at /sovra/v1/tenants; saved in {}, shown again by `sovra keys`)",
        data_dir.platform_key_file().display()
    );
    println!();
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
