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
use crate::{AppState, Tenant, TenantResolver, router};

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
        return Ok(Database {
            admin: parsed.clone(),
            requests: parsed,
            cluster: None,
        });
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
    out.smtp_url.clone_from(&a.smtp_url);
    out.smtp_from.clone_from(&a.smtp_from);
    out.templates_dir.clone_from(&a.templates_dir);
    let max = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let r = &a.rate_limit;
    out.limits.sign_in.max = max(r.sign_in);
    out.limits.verify.max = max(r.verify);
    out.limits.refresh.max = max(r.token_refresh);
    out.limits.otp.max = max(r.otp);
    out.limits.email_sent.max = max(r.email_sent);
    out.limits.anonymous.max = max(r.anonymous);
    Ok(out)
}

/// Builds the single tenant of this server: its pools, keys and services
/// (the REST schema cache is loaded before this returns). `requests`
/// connects as `authenticator`; `service` as a role that may become
/// `supabase_auth_admin` (the superuser of the embedded cluster, or the
/// user of `database.url`).
pub async fn build_tenant(
    config: &Config,
    requests: sovra_pg::tokio_postgres::Config,
    service: sovra_pg::tokio_postgres::Config,
    keys: ProjectKeys,
) -> Result<Tenant, ServeError> {
    let rest = sovra_rest::RestService::start(
        sovra_rest::RestConfig {
            schemas: config.rest.schema_list(),
            max_rows: (config.rest.max_rows > 0)
                .then(|| i64::try_from(config.rest.max_rows).unwrap_or(i64::MAX)),
        },
        requests.clone(),
        Duration::from_secs(config.database.connect_timeout),
    )
    .await;
    let pool = sovra_pg::pool::build(
        requests,
        config.database.pool_size,
        Duration::from_secs(config.database.connect_timeout),
    )
    .map_err(|err| ServeError::Pool(err.to_string()))?;
    // Auth works on its own tables as their owner, never as a superuser.
    let mut auth_db = service.clone();
    auth_db.options("-c role=supabase_auth_admin");
    let auth_pool = sovra_pg::pool::build(
        auth_db,
        config.database.pool_size.clamp(2, 32),
        Duration::from_secs(config.database.connect_timeout),
    )
    .map_err(|err| ServeError::Pool(err.to_string()))?;
    let auth =
        sovra_auth::AuthService::new(auth_config(config)?, auth_pool).map_err(ServeError::Auth)?;
    if let Err(err) = auth.reload_api_keys().await {
        tracing::warn!(error = %err.message, "could not load API keys");
    }
    let storage =
        sovra_storage::StorageService::new(storage_config(config), "default", pool.clone())
            .map_err(ServeError::Storage)?;
    let keyset = std::sync::Arc::new(keys.keyset);
    let verify_keys = keyset.clone();
    let verifier: sovra_realtime::Verifier = std::sync::Arc::new(move |token: &str| {
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
    let realtime =
        sovra_realtime::RealtimeService::new(realtime_config(config), pool.clone(), verifier);
    realtime.set_feed_source(service.clone());
    let id = "default".to_owned();
    if !config.realtime.nats_url.is_empty() {
        let subject = format!("{}.{id}", config.realtime.nats_subject);
        realtime
            .attach_nats(&config.realtime.nats_url, &subject)
            .await
            .map_err(ServeError::Realtime)?;
    }
    Ok(Tenant {
        id,
        storage,
        realtime,
        pool,
        keys: keyset,
        api_keys: keys.api,
        require_apikey: config.server.require_apikey,
        rest,
        auth,
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
        outbound_queue: size(realtime.outbound_queue),
        idle_timeout: Duration::from_secs(realtime.idle_timeout),
        max_slot_lag_bytes: realtime.max_slot_lag,
        catchup_window: Duration::from_secs(realtime.catchup_window),
        catchup_max_changes: size(realtime.catchup_max_changes),
        ..sovra_realtime::RealtimeConfig::default()
    }
}

/// The storage settings of the configuration.
fn storage_config(config: &Config) -> sovra_storage::StorageConfig {
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
    let keys = keys::load_or_create(&data_dir.keys_file(), config)?;
    let first_run = keys.created;
    let api = keys.api.clone();
    let tenant = build_tenant(config, requests, admin.clone(), keys).await?;
    let tenants = TenantResolver::single(tenant);
    spawn_api_key_refresh(tenants.clone());
    spawn_upload_sweeper(tenants.clone());
    // The change feed starts now, so that changes made before the first
    // subscriber arrives are read in order (tests start it on first join).
    for tenant in tenants.all() {
        tenant.realtime.start_feed(admin.clone());
    }
    let state = AppState::new(tenants.clone(), config.server.body_limit)
        .with_metrics_token(config.metrics.token.as_deref());
    if config.metrics_exposed() {
        tracing::warn!(
            listen = %config.server.listen,
            "/metrics is open to every client that reaches {}: set `metrics.token` (SOVRA_METRICS_TOKEN) or block /metrics in front of Sovra",
            config.server.listen
        );
    }
    let app = router(state);

    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(ServeError::Http)?;
    let url = config.public_url(bound);
    for tenant in tenants.all() {
        tenant.auth.set_external_url(&url);
    }
    tracing::info!(
        %url,
        startup_ms = started.elapsed().as_millis() as u64,
        migrations_applied = report.applied.len(),
        pgvector = report.vector,
        "sovra is ready"
    );
    print_banner(&url, &api, first_run, data_dir, cluster.is_some());

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        let _ = drain_rx.await;
    };
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(graceful);
    let server = tokio::spawn(async move { server.await });
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
    tracing::info!("shutting down: finishing in-flight requests");
    for tenant in tenants.all() {
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
