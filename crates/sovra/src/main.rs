//! The `sovra` command: parses the command line, loads the configuration,
//! and hands over to `sovra_server`. Kept thin on purpose.

#![allow(clippy::print_stdout)]

mod doctor;
mod tenants;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sovra_config::{Config, Loader};

/// Sovra: the Supabase-compatible backend in one binary.
///
/// Serves the auth, REST, realtime and storage APIs that the Supabase client
/// libraries speak, over plain PostgreSQL with row-level security. With no
/// configuration, `sovra serve` runs its own PostgreSQL in the data
/// directory and prints the URL and keys to point your app at.
#[derive(Parser, Debug)]
#[command(name = "sovra", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct GlobalArgs {
    /// Configuration file [default: ./sovra.toml when present; env: SOVRA_CONFIG].
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "SOVRA_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir` and SOVRA_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL of an existing server; without it Sovra runs its own
    /// (overrides `database.url` and SOVRA_DATABASE_URL).
    #[arg(long, global = true, value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
}

// Parsed once per run: the size of the largest command does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Start the server (and the embedded PostgreSQL unless a database URL
    /// is configured). Stops cleanly on Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on, e.g. 0.0.0.0:54321 (overrides `server.listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Apply pending database migrations and exit. `serve` also does this
    /// at start; several instances may run it at once safely.
    Migrate,
    /// Print the anon and service_role API keys and where the signing keys
    /// are kept; rotate or retire signing keys.
    Keys {
        /// Make a new signing key and new API keys. The previous key (and
        /// the API keys and tokens it signed) still verify until retired.
        /// A running server picks the new key up at its next start.
        #[arg(long, conflicts_with = "retire")]
        rotate: bool,
        /// Retire a previous signing key by its id: tokens it signed stop
        /// verifying.
        #[arg(long, value_name = "KID")]
        retire: Option<String>,
        /// Make a new pair of opaque API keys in Supabase's current format
        /// (`sb_publishable_…` for anon, `sb_secret_…` for service_role)
        /// and print them this once: only their digests are kept. The
        /// previous pair stops working when the server next starts.
        #[arg(long, conflicts_with_all = ["rotate", "retire"])]
        rotate_opaque: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check this machine: PostgreSQL binaries and version, pgvector, the
    /// data directory, the ports. Says what is missing and how to fix it.
    Doctor,
    /// List and print the mail (and text messages) Auth delivered to the
    /// local mailbox in the data directory — what it does when no SMTP
    /// server is configured (`auth.smtp_url`).
    Mail {
        /// Only messages to this address or phone number.
        #[arg(long, value_name = "ADDR")]
        to: Option<String>,
        /// Print the newest message in full.
        #[arg(long)]
        last: bool,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage API keys for machine-to-machine access through the running
    /// server (`sovra serve` must be up; the service_role key is read from
    /// the data directory).
    ApiKeys {
        #[command(subcommand)]
        action: ApiKeyAction,
        /// URL of the running server [default: the configured public URL].
        /// Plain http:// is refused unless the host is this machine
        /// (localhost, 127.0.0.0/8, ::1): the service_role key travels with
        /// every request.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Allow a plain http:// URL to another machine (a private network
        /// you trust); the service_role key is then sent unencrypted.
        #[arg(long)]
        allow_http: bool,
    },
    /// Manage the S3 access keys of `/storage/v1/s3` through the running
    /// server (full access to every bucket, as service_role; the
    /// service_role key is read from the data directory).
    S3Keys {
        #[command(subcommand)]
        action: S3KeyAction,
        /// URL of the running server [default: the configured public URL].
        /// Plain http:// is refused unless the host is this machine.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Allow a plain http:// URL to another machine (a private network
        /// you trust); the service_role key is then sent unencrypted.
        #[arg(long)]
        allow_http: bool,
    },
    /// Create, list, show, update, suspend, resume and delete tenants
    /// (isolated projects, each with its own database, keys and URL)
    /// through the running server, with the platform key.
    Tenants(tenants::TenantsArgs),
    /// HTTP requests from SQL (`net.http_*`, database webhooks, the
    /// outbox): list and replay the dead letters of the default tenant's
    /// database. Opens the data directory like `migrate`, so with the
    /// embedded database it runs while the server is stopped (while it
    /// runs, `select net.replay_dead_letters()` in SQL does the same).
    Net {
        #[command(subcommand)]
        action: NetAction,
    },
}

#[derive(Subcommand, Debug)]
enum NetAction {
    /// List the requests that failed every attempt (`net.http_request_dead`).
    Dead {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the queue, attempts counted from zero: all
    /// of them, or those given with `--id`.
    Replay {
        /// A request id (repeatable).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<i64>,
    },
}

#[derive(Subcommand, Debug)]
enum S3KeyAction {
    /// List the keys (ids, descriptions; never the secrets).
    List,
    /// Make a key pair; the secret is printed once and never stored.
    Create {
        /// A description that says who uses it.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a key at once.
    Revoke {
        /// The access key id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum ApiKeyAction {
    /// List the keys (names, roles, prefixes; never the keys themselves).
    List,
    /// Make a key; it is printed once and only its hash is kept.
    Create {
        /// A name that says who uses it.
        #[arg(long)]
        name: String,
        /// The database role requests with this key run as.
        #[arg(long, default_value = "service_role")]
        role: String,
    },
    /// Revoke a key by its id.
    Revoke { id: String },
}

/// The configuration, and warnings (unknown `SOVRA_*` variables) to log once
/// logging is set up.
fn load_config(
    global: &GlobalArgs,
    listen: Option<&String>,
) -> Result<(Config, Vec<String>), sovra_config::ConfigError> {
    let loader = match &global.config {
        Some(path) => Loader::file(path, true)?,
        None => Loader::file(std::path::Path::new(sovra_config::DEFAULT_FILE), false)?,
    };
    let mut loader = loader
        .env(std::env::vars())?
        .default_data_dir(root_aware_data_dir());
    let warnings = loader.env_warnings();
    if let Some(dir) = &global.data_dir {
        loader = loader.set("data_dir", dir.display().to_string());
    }
    if let Some(url) = &global.database_url {
        loader = loader.set("database.url", url.clone());
    }
    if let Some(listen) = listen {
        loader = loader.set("server.listen", listen.clone());
    }
    Ok((loader.load()?, warnings))
}

/// The default data directory for the user Sovra runs as (see
/// [`sovra_config::default_data_dir`]).
fn root_aware_data_dir() -> &'static str {
    let root = nix::unistd::geteuid().is_root();
    let holds_project = std::path::Path::new(sovra_config::DEFAULT_DATA_DIR)
        .join("keys.json")
        .exists();
    sovra_config::default_data_dir(root, holds_project)
}

/// An error and its causes, each said once: many messages already include
/// their source's text (`embedded postgresql: {0}`), which `{:#}` would
/// print a second time.
fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// mimalloc instead of glibc's malloc: a REST request allocates and frees
/// many small buffers across the runtime's threads, and glibc's allocator
/// took about a quarter of the server's CPU in it (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let listen = match &cli.command {
        Command::Serve { listen } => listen.as_ref(),
        _ => None,
    };
    let (config, warnings) = match load_config(&cli.global, listen) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("sovra: {err}");
            return ExitCode::from(2);
        }
    };
    sovra_server::observe::init_logging(&config);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("sovra: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => serve(config).await,
            Command::Migrate => migrate(config).await,
            Command::Keys {
                rotate,
                retire,
                rotate_opaque: true,
                json,
            } => {
                let _ = (rotate, retire);
                opaque_keys(&config, json)
            }
            Command::Keys {
                rotate,
                retire,
                json,
                ..
            } => keys(&config, rotate, retire.as_deref(), json),
            Command::Doctor => doctor::run(&config).await,
            Command::Mail { to, last, json } => mail(&config, to.as_deref(), last, json),
            Command::ApiKeys {
                action,
                url,
                allow_http,
            } => api_keys(&config, action, url, allow_http).await,
            Command::S3Keys {
                action,
                url,
                allow_http,
            } => s3_keys(&config, action, url, allow_http).await,
            Command::Tenants(args) => tenants::run(&config, args).await,
            Command::Net { action } => net(config, action).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sovra: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    sovra_server::serve::run(config, sovra_server::serve::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(config: Config) -> anyhow::Result<ExitCode> {
    let data_dir = sovra_server::data_dir::DataDir::open(&config.data_dir)?;
    let database = sovra_server::serve::open_database(&config, &data_dir).await?;
    let result = sovra_server::serve::run_migrations(&database.admin).await;
    if let Some(cluster) = database.cluster {
        cluster.stop(std::time::Duration::from_secs(30)).await;
    }
    let report = result?;
    if report.applied.is_empty() {
        println!(
            "database is up to date ({} migrations)",
            sovra_pg::migrate::MIGRATIONS.len()
        );
    } else {
        println!("applied migrations {:?}", report.applied);
    }
    if !report.vector {
        println!("note: pgvector is not installed on this server; vector columns are unavailable");
    }
    Ok(ExitCode::SUCCESS)
}

async fn net(config: Config, action: NetAction) -> anyhow::Result<ExitCode> {
    let data_dir = sovra_server::data_dir::DataDir::open(&config.data_dir)?;
    let database = sovra_server::serve::open_database(&config, &data_dir).await?;
    let result = async {
        sovra_server::serve::run_migrations(&database.admin).await?;
        let client = sovra_pg::connect_one(&database.admin).await?;
        match action {
            NetAction::Dead { json } => {
                let rows = client
                    .query(
                        "select jsonb_build_object('id', id, 'method', method, 'url', url,
                           'attempts', attempts, 'last_error', last_error, 'failed_at', failed_at)
                           from net.http_request_dead order by id",
                        &[],
                    )
                    .await?;
                let letters: Vec<serde_json::Value> = rows.iter().map(|row| row.get(0)).collect();
                if json {
                    println!("{}", serde_json::Value::Array(letters));
                } else if letters.is_empty() {
                    println!("no dead letters");
                } else {
                    for letter in letters {
                        // The URL without its query (it may carry secrets).
                        let url = letter["url"].as_str().unwrap_or("");
                        println!(
                            "{}\t{} {}\t{} attempts\t{}",
                            letter["id"],
                            letter["method"].as_str().unwrap_or(""),
                            url.split('?').next().unwrap_or(url),
                            letter["attempts"],
                            letter["last_error"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            NetAction::Replay { ids } => {
                let ids = (!ids.is_empty()).then_some(ids);
                let moved: i64 = client
                    .query_one("select net.replay_dead_letters($1)", &[&ids])
                    .await?
                    .get(0);
                println!("replayed {moved} dead letters (delivered when the server runs)");
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Some(cluster) = database.cluster {
        cluster.stop(std::time::Duration::from_secs(30)).await;
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

fn keys(
    config: &Config,
    rotate: bool,
    retire: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use sovra_server::keys;
    std::fs::create_dir_all(&config.data_dir)?;
    let path = config.data_dir.join("keys.json");
    if let Some(kid) = retire {
        keys::retire(&path, config, kid)?;
        println!(
            "retired signing key {kid}: tokens it signed no longer verify (after the server restarts)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let project = if rotate {
        keys::rotate(&path, config)?
    } else {
        keys::load_or_create(&path, config)?
    };
    let signing = keys::list(&path)?;
    let platform_path = config.data_dir.join("platform.key");
    let platform = sovra_server::platform::load_or_create(&platform_path)?;
    if json {
        let value = serde_json::json!({
            "anon_key": project.api.anon,
            "service_role_key": project.api.service_role,
            "platform_key": platform.key,
            "keys_file": path.display().to_string(),
            "signing_keys": signing.iter().map(|(kid, status, created)| serde_json::json!({"kid": kid, "status": status, "created_at": created})).collect::<Vec<_>>(),
        });
        println!("{value:#}");
        return Ok(ExitCode::SUCCESS);
    }
    if rotate {
        println!("rotated: new tokens are signed with the new key once the server restarts");
    }
    println!("anon key          {}", project.api.anon);
    println!("service_role key  {}", project.api.service_role);
    match &config.jwt.secret {
        Some(_) => println!("JWT secret        from the configuration (`jwt.secret`)"),
        None => println!("JWT secret        in {} (mode 0600)", path.display()),
    }
    for (kid, status, _) in signing {
        println!("signing key       {kid} ({status})");
    }
    println!(
        "platform key      {} (tenant API; in {})",
        platform.key,
        platform_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `sovra keys --rotate-opaque`: a new `sb_publishable_…`/`sb_secret_…`
/// pair, printed once.
fn opaque_keys(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&config.data_dir)?;
    let path = config.data_dir.join("keys.json");
    let pair = sovra_server::keys::rotate_opaque(&path, config)?;
    if json {
        let value = serde_json::json!({
            "publishable_key": pair.publishable,
            "secret_key": pair.secret,
            "keys_file": path.display().to_string(),
        });
        println!("{value:#}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("publishable key   {}", pair.publishable);
    println!("secret key        {}", pair.secret);
    println!(
        "(shown this once: {} keeps only their digests; the previous pair stops working when the server next starts)",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn mail(config: &Config, to: Option<&str>, last: bool, json: bool) -> anyhow::Result<ExitCode> {
    let dir = config.data_dir.join("mailbox");
    let messages = sovra_auth::mail::read_mailbox(&dir, to)?;
    if json {
        let value = if last {
            serde_json::to_value(messages.last())?
        } else {
            serde_json::to_value(&messages)?
        };
        println!("{value:#}");
        return Ok(ExitCode::SUCCESS);
    }
    if messages.is_empty() {
        println!("no mail in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    if last {
        if let Some(m) = messages.last() {
            println!("To:      {}", m.to);
            println!("Kind:    {}", m.kind.name());
            println!("Subject: {}", m.subject);
            println!(
                "Sent:    {}",
                sovra_auth::time::rfc3339(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(m.sent_at.unsigned_abs())
                )
            );
            println!();
            println!("{}", m.body);
        }
        return Ok(ExitCode::SUCCESS);
    }
    for m in &messages {
        let sent = sovra_auth::time::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.sent_at.unsigned_abs()),
        );
        println!(
            "{}  {:<16}  {:<32}  {}",
            &sent[..19],
            m.kind.name(),
            m.to,
            m.subject
        );
    }
    println!(
        "({} messages; `sovra mail --last` prints the newest)",
        messages.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks the URL `sovra api-keys` sends the service_role key to: http or
/// https, and plain http only to this machine unless `allow_http`.
fn check_server_url(base: &str, allow_http: bool) -> anyhow::Result<()> {
    check_url_for(base, allow_http, "service_role key")
}

/// [`check_server_url`] for a request that carries `secret`.
fn check_url_for(base: &str, allow_http: bool, secret: &str) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(base)
        .map_err(|err| anyhow::anyhow!("--url {base:?} is not a URL: {err}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if allow_http || url.host_str().is_some_and(is_local_host) => Ok(()),
        "http" => anyhow::bail!(
            "refusing to send the {secret} over plain http to {}: use an https:// URL (or --allow-http on a network you trust)",
            url.host_str().unwrap_or("")
        ),
        other => anyhow::bail!("--url must be http:// or https://, not {other}://"),
    }
}

/// Hosts that are this machine: `localhost` (and `*.localhost`, RFC 6761),
/// loopback addresses (IPv4-mapped ones too) and the unspecified address,
/// which connects locally (the default URL when listening on 0.0.0.0).
fn is_local_host(host: &str) -> bool {
    use std::net::IpAddr;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback() || v4.is_unspecified(),
        Ok(IpAddr::V6(v6)) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
        Err(_) => {
            let name = bare.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

async fn api_keys(
    config: &Config,
    action: ApiKeyAction,
    url: Option<String>,
    allow_http: bool,
) -> anyhow::Result<ExitCode> {
    let base = url.unwrap_or_else(|| config.public_url(config.listen_addr()));
    check_server_url(&base, allow_http)?;
    let keys = sovra_server::keys::load_or_create(&config.data_dir.join("keys.json"), config)?;
    let endpoint = format!("{}/auth/v1/admin/api_keys", base.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let service = keys.api.service_role;
    let request = match &action {
        ApiKeyAction::List => client.get(&endpoint),
        ApiKeyAction::Create { name, role } => client
            .post(&endpoint)
            .json(&serde_json::json!({"name": name, "role": role})),
        ApiKeyAction::Revoke { id } => client.delete(format!("{endpoint}/{id}")),
    };
    let response = request
        .header("apikey", &service)
        .bearer_auth(&service)
        .send()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach {base} (is `sovra serve` running?): {err}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body
            .get("msg")
            .or_else(|| body.get("message"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("request failed");
        eprintln!("sovra: {message} ({status})");
        return Ok(ExitCode::FAILURE);
    }
    match action {
        ApiKeyAction::List => {
            let empty = Vec::new();
            let list = body.as_array().unwrap_or(&empty);
            if list.is_empty() {
                println!("no API keys");
            }
            for key in list {
                let revoked = if key["revoked_at"].is_null() {
                    ""
                } else {
                    "  (revoked)"
                };
                println!(
                    "{}  {}…  {:<16} {}{revoked}",
                    key["id"].as_str().unwrap_or(""),
                    key["prefix"].as_str().unwrap_or(""),
                    key["role"].as_str().unwrap_or(""),
                    key["name"].as_str().unwrap_or("")
                );
            }
        }
        ApiKeyAction::Create { .. } => {
            println!("id    {}", body["id"].as_str().unwrap_or(""));
            println!("key   {}", body["key"].as_str().unwrap_or(""));
            println!(
                "Send it in the `apikey` header. It is shown only now: only its hash is kept."
            );
        }
        ApiKeyAction::Revoke { id } => println!("revoked {id}"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn s3_keys(
    config: &Config,
    action: S3KeyAction,
    url: Option<String>,
    allow_http: bool,
) -> anyhow::Result<ExitCode> {
    let base = url.unwrap_or_else(|| config.public_url(config.listen_addr()));
    check_server_url(&base, allow_http)?;
    let keys = sovra_server::keys::load_or_create(&config.data_dir.join("keys.json"), config)?;
    let base = base.trim_end_matches('/').to_owned();
    let endpoint = format!("{base}/storage/v1/s3-credentials");
    let client = reqwest::Client::new();
    let service = keys.api.service_role;
    let request = match &action {
        S3KeyAction::List => client.get(&endpoint),
        S3KeyAction::Create { description } => client
            .post(&endpoint)
            .json(&serde_json::json!({"description": description})),
        S3KeyAction::Revoke { id } => client.delete(format!("{endpoint}/{id}")),
    };
    let response = request
        .header("apikey", &service)
        .bearer_auth(&service)
        .send()
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach {base} (is `sovra serve` running?): {err}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body
            .get("message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("request failed");
        eprintln!("sovra: {message} ({status})");
        return Ok(ExitCode::FAILURE);
    }
    match action {
        S3KeyAction::List => {
            let empty = Vec::new();
            let list = body.as_array().unwrap_or(&empty);
            if list.is_empty() {
                println!("no S3 access keys");
            }
            for key in list {
                println!(
                    "{}  {}  {}",
                    key["id"].as_str().unwrap_or(""),
                    key["created_at"].as_str().unwrap_or(""),
                    key["description"].as_str().unwrap_or("")
                );
            }
        }
        S3KeyAction::Create { .. } => {
            println!("endpoint           {base}/storage/v1/s3");
            println!("region             {}", config.storage.s3_protocol.region);
            println!(
                "access key id      {}",
                body["access_key"].as_str().unwrap_or("")
            );
            println!(
                "secret access key  {}",
                body["secret_key"].as_str().unwrap_or("")
            );
            println!(
                "Full access to every bucket (as service_role). The secret is shown only now."
            );
        }
        S3KeyAction::Revoke { id } => println!("revoked {id}"),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::{check_server_url, describe};

    #[test]
    fn an_error_says_each_cause_once() {
        #[derive(Debug)]
        struct Inner;
        impl std::fmt::Display for Inner {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot reach /root")
            }
        }
        impl std::error::Error for Inner {}
        #[derive(Debug)]
        struct Outer(Inner);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "embedded postgresql: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = anyhow::Error::new(Outer(Inner));
        assert_eq!(describe(&err), "embedded postgresql: cannot reach /root");
        // A cause the message does not include is still said.
        let err = anyhow::Error::new(Inner).context("starting");
        assert_eq!(describe(&err), "starting: cannot reach /root");
    }

    #[test]
    fn plain_http_only_to_this_machine() {
        for ok in [
            "https://api.example.com",
            "https://10.0.0.5:54321",
            "http://localhost:54321",
            "http://LOCALHOST.:54321",
            "http://app.localhost",
            "http://127.0.0.1:54321",
            "http://127.8.9.10",
            "http://[::1]:54321",
            "http://[::ffff:127.0.0.1]:54321",
            "http://0.0.0.0:54321",
            "http://[::]:54321",
        ] {
            assert!(check_server_url(ok, false).is_ok(), "{ok}");
        }
        for refused in [
            "http://api.example.com",
            "http://10.0.0.5:54321",
            "http://192.168.1.2",
            "http://[fe80::1]:54321",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
        ] {
            let err = check_server_url(refused, false).unwrap_err().to_string();
            assert!(
                err.contains("plain http") && err.contains("--allow-http"),
                "{refused}: {err}"
            );
            assert!(check_server_url(refused, true).is_ok(), "{refused}");
        }
        for bad in [
            "ftp://localhost",
            "localhost:54321",
            "not a url",
            "file:///tmp/x",
        ] {
            assert!(check_server_url(bad, true).is_err(), "{bad}");
        }
    }
}
