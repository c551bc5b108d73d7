//! `sovra tenants`: the tenant API (`/sovra/v1/tenants`) of a running
//! server, with the platform key from the data directory.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};
use sovra_config::Config;

#[derive(Args, Debug)]
pub(crate) struct TenantsArgs {
    #[command(subcommand)]
    action: Action,
    /// URL of the running server [default: the configured public URL].
    /// Plain http:// is refused unless the host is this machine: the
    /// platform key travels with every request.
    #[arg(long, global = true, value_name = "URL")]
    url: Option<String>,
    /// Allow a plain http:// URL to another machine (a private network you
    /// trust); the platform key is then sent unencrypted.
    #[arg(long, global = true)]
    allow_http: bool,
    /// The platform key [default: <data_dir>/platform.key].
    #[arg(
        long,
        global = true,
        env = "SOVRA_PLATFORM_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    platform_key: Option<String>,
    /// Print the server's JSON answer.
    #[arg(long, global = true)]
    json: bool,
}

// Parsed once per run: the size of the largest command does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Action {
    /// Create a tenant: its own database, keys and URL.
    Create {
        /// A lowercase DNS label (a-z, 0-9, '-'; at most 40 characters).
        name: String,
    },
    /// List the tenants.
    List,
    /// Show one tenant, with its URL and keys.
    Show { name: String },
    /// Change a tenant's settings and quotas.
    Update {
        name: String,
        /// Where auth sends users after confirming (`site_url`).
        #[arg(long)]
        site_url: Option<String>,
        /// Allowed redirect URLs, comma-separated.
        #[arg(long, value_delimiter = ',')]
        redirect_urls: Option<Vec<String>>,
        /// Confirm email sign-ups without a mail.
        #[arg(long)]
        email_autoconfirm: Option<bool>,
        /// Refuse new sign-ups.
        #[arg(long)]
        disable_signup: Option<bool>,
        /// Refuse requests without an apikey.
        #[arg(long)]
        require_apikey: Option<bool>,
        /// Quota: connections of the tenant's request pool.
        #[arg(long)]
        pool_size: Option<usize>,
        /// Quota: requests per second (more get 429).
        #[arg(long)]
        requests_per_second: Option<u64>,
        /// Quota: statement timeout of its requests, in milliseconds.
        #[arg(long)]
        statement_timeout_ms: Option<u64>,
        /// Quota: concurrent realtime connections.
        #[arg(long)]
        realtime_max_connections: Option<u64>,
        /// Quota: largest stored object, in bytes.
        #[arg(long)]
        storage_file_size_limit: Option<u64>,
        /// Quota: bytes of all stored objects (0: none).
        #[arg(long)]
        storage_max_bytes: Option<u64>,
        /// Quota: database size in bytes; over it the tenant is read-only
        /// (0: none).
        #[arg(long)]
        database_max_bytes: Option<u64>,
        /// Quota: mails auth sends per hour, all recipients (0: none).
        #[arg(long)]
        mails_per_hour: Option<u64>,
        /// Quota: channels one realtime connection may join.
        #[arg(long)]
        realtime_max_channels_per_connection: Option<u64>,
        /// Quota: realtime messages per second, all connections (0: none).
        #[arg(long)]
        realtime_events_per_second: Option<u64>,
        /// Quota: requests in progress at once; more wait (0: no limit).
        #[arg(long)]
        max_concurrent_requests: Option<u64>,
        /// Auth's mail server (smtp:// or smtps://).
        #[arg(long)]
        smtp_url: Option<String>,
        /// The sender of auth's mails ("Name <a@b.example>").
        #[arg(long)]
        smtp_from: Option<String>,
        /// Make a new pair of opaque keys (sb_publishable_/sb_secret_),
        /// shown once; the previous pair stops working.
        #[arg(long)]
        rotate_opaque_keys: bool,
        /// Sign with this JWT secret (a Supabase project's, at least 32
        /// characters); new anon and service_role keys are made.
        #[arg(long, hide_env_values = true)]
        jwt_secret: Option<String>,
    },
    /// Suspend a tenant: its requests get 503 and its sockets close.
    Suspend { name: String },
    /// Resume a suspended tenant.
    Resume { name: String },
    /// Delete a tenant with its database, files and keys. Cannot be undone.
    Delete { name: String },
}

fn update_body(action: &Action) -> Value {
    let Action::Update {
        site_url,
        redirect_urls,
        email_autoconfirm,
        disable_signup,
        require_apikey,
        pool_size,
        requests_per_second,
        statement_timeout_ms,
        realtime_max_connections,
        storage_file_size_limit,
        storage_max_bytes,
        database_max_bytes,
        mails_per_hour,
        realtime_max_channels_per_connection,
        realtime_events_per_second,
        max_concurrent_requests,
        smtp_url,
        smtp_from,
        rotate_opaque_keys,
        jwt_secret,
        ..
    } = action
    else {
        return Value::Null;
    };
    let mut body = Map::new();
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            body.insert(key.to_owned(), value);
        }
    };
    set("site_url", site_url.as_ref().map(|v| json!(v)));
    set("redirect_urls", redirect_urls.as_ref().map(|v| json!(v)));
    set("email_autoconfirm", email_autoconfirm.map(|v| json!(v)));
    set("disable_signup", disable_signup.map(|v| json!(v)));
    set("require_apikey", require_apikey.map(|v| json!(v)));
    set("pool_size", pool_size.map(|v| json!(v)));
    set("requests_per_second", requests_per_second.map(|v| json!(v)));
    set(
        "statement_timeout_ms",
        statement_timeout_ms.map(|v| json!(v)),
    );
    set(
        "realtime_max_connections",
        realtime_max_connections.map(|v| json!(v)),
    );
    set(
        "storage_file_size_limit",
        storage_file_size_limit.map(|v| json!(v)),
    );
    set("storage_max_bytes", storage_max_bytes.map(|v| json!(v)));
    set("database_max_bytes", database_max_bytes.map(|v| json!(v)));
    set("mails_per_hour", mails_per_hour.map(|v| json!(v)));
    set(
        "realtime_max_channels_per_connection",
        realtime_max_channels_per_connection.map(|v| json!(v)),
    );
    set(
        "realtime_events_per_second",
        realtime_events_per_second.map(|v| json!(v)),
    );
    set(
        "max_concurrent_requests",
        max_concurrent_requests.map(|v| json!(v)),
    );
    set("smtp_url", smtp_url.as_ref().map(|v| json!(v)));
    set("smtp_from", smtp_from.as_ref().map(|v| json!(v)));
    set(
        "rotate_opaque_keys",
        rotate_opaque_keys.then_some(json!(true)),
    );
    set("jwt_secret", jwt_secret.as_ref().map(|v| json!(v)));
    Value::Object(body)
}

#[allow(clippy::print_stdout)]
fn print_tenant(tenant: &Value) {
    let text = |key: &str| tenant[key].as_str().unwrap_or("").to_owned();
    println!("name              {}", text("name"));
    println!("state             {}", text("state"));
    println!("url               {}", text("url"));
    if let Some(host) = tenant["host_url"].as_str() {
        println!("host url          {host}");
    }
    println!("database          {}", text("database"));
    println!("anon key          {}", text("anon_key"));
    println!("service_role key  {}", text("service_role_key"));
    // Opaque keys are in the answer only when they were just made.
    if let Some(key) = tenant["publishable_key"].as_str() {
        println!("publishable key   {key}");
    }
    if let Some(key) = tenant["secret_key"].as_str() {
        println!("secret key        {key}  (shown once: keep it now)");
    }
    if tenant["read_only"] == Value::Bool(true) {
        println!("read-only         yes (over its database size quota)");
    }
    if let Some(settings) = tenant["settings"].as_object()
        && !settings.is_empty()
    {
        println!("settings          {}", Value::Object(settings.clone()));
    }
}

/// Runs `sovra tenants …`.
#[allow(clippy::print_stdout)]
pub(crate) async fn run(config: &Config, args: TenantsArgs) -> anyhow::Result<ExitCode> {
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| config.public_url(config.listen_addr()));
    crate::check_url_for(&base, args.allow_http, "platform key")?;
    let key = match &args.platform_key {
        Some(key) => key.clone(),
        None => {
            let path = config.data_dir.join("platform.key");
            std::fs::read_to_string(&path)
                .map_err(|err| {
                    anyhow::anyhow!(
                        "cannot read the platform key in {} ({err}): start `sovra serve` once, or pass --platform-key",
                        path.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let endpoint = format!("{}/sovra/v1/tenants", base.trim_end_matches('/'));
    let client = reqwest::Client::new();
    let request = match &args.action {
        Action::Create { name } => client.post(&endpoint).json(&json!({"name": name})),
        Action::List => client.get(&endpoint),
        Action::Show { name } => client.get(format!("{endpoint}/{name}")),
        Action::Update { name, .. } => client
            .patch(format!("{endpoint}/{name}"))
            .json(&update_body(&args.action)),
        Action::Suspend { name } => client.post(format!("{endpoint}/{name}/suspend")),
        Action::Resume { name } => client.post(format!("{endpoint}/{name}/resume")),
        Action::Delete { name } => client.delete(format!("{endpoint}/{name}")),
    };
    let response =
        request.bearer_auth(&key).send().await.map_err(|err| {
            anyhow::anyhow!("cannot reach {base} (is `sovra serve` running?): {err}")
        })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["message"].as_str().unwrap_or("request failed");
        if args.json {
            println!("{body:#}");
        }
        eprintln!("sovra: {message} ({status})");
        return Ok(ExitCode::FAILURE);
    }
    if args.json {
        let out = if body.is_null() {
            json!({"deleted": true})
        } else {
            body
        };
        println!("{out:#}");
        return Ok(ExitCode::SUCCESS);
    }
    match &args.action {
        Action::List => {
            let empty = Vec::new();
            let list = body.as_array().unwrap_or(&empty);
            if list.is_empty() {
                println!("no tenants");
            }
            for tenant in list {
                println!(
                    "{:<40} {:<10} {}",
                    tenant["name"].as_str().unwrap_or(""),
                    tenant["state"].as_str().unwrap_or(""),
                    tenant["url"].as_str().unwrap_or("")
                );
            }
        }
        Action::Delete { name } => println!("deleted tenant {name}"),
        _ => print_tenant(&body),
    }
    Ok(ExitCode::SUCCESS)
}
