//! The server as `sovra serve` builds it with the tenant API (a platform
//! key, the default tenant refusing the tenants' refs), on a fresh test
//! database: shared by the tenant tests (`#[path]`-included, so a test
//! binary takes only this helper).

#![allow(dead_code)]

use std::sync::Arc;

use sovra_server::tenants::Platform;
use sovra_test_support::TestDb;

pub(crate) struct Spawned {
    pub url: String,
    /// The platform key.
    pub key: String,
    pub default_anon: String,
    /// The default tenant's opaque secret key (`sb_secret_…`).
    pub default_secret_key: String,
    pub db: TestDb,
    pub platform: Arc<Platform>,
    pub server: tokio::task::JoinHandle<()>,
}

pub(crate) async fn spawn(mut config: sovra_config::Config) -> Spawned {
    let db = TestDb::new().await;
    config.data_dir = sovra_test_support::scratch_dir();
    let served = serve_on(&config, &db).await;
    Spawned {
        url: served.url,
        key: served.key,
        default_anon: served.default_anon,
        default_secret_key: served.default_secret_key,
        db,
        platform: served.platform,
        server: served.server,
    }
}

/// A server started on `db` with `config` (its `data_dir` kept): what
/// `spawn` makes, and a restart of it. A tenant secrets key that does not
/// open the registry is the error `sovra serve` stops with.
pub(crate) async fn try_serve_on(
    config: &sovra_config::Config,
    db: &TestDb,
) -> Result<Served, String> {
    let data_dir = config.data_dir.clone();
    let default_secret_key = sovra_server::keys::rotate_opaque(&data_dir.join("keys.json"), config)
        .unwrap()
        .secret;
    let mut keys = sovra_server::keys::load_or_create(&data_dir.join("keys.json"), config).unwrap();
    let default_anon = keys.api.anon.clone();
    let key = sovra_server::platform::load_or_create(&data_dir.join("platform.key"))
        .unwrap()
        .key;
    // As `sovra serve` does: secrets sealed, and the default tenant
    // refuses the tenants' refs.
    let platform = Arc::new(Platform::new(config, db.config(), &key)?);
    platform.seal_registry().await?;
    platform.refresh_names().await.unwrap();
    keys.keyset = keys.keyset.with_foreign_refs(platform.ref_guard());
    let tenant =
        sovra_server::serve::build_tenant(config, db.config_as("authenticator"), db.config(), keys)
            .await
            .unwrap();
    let resolver = sovra_server::TenantResolver::single(tenant);
    let default = resolver.default_tenant();
    let state =
        sovra_server::AppState::from_config(resolver, config).with_platform(platform.clone());
    let app = sovra_server::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    default.auth.set_external_url(&url);
    platform.set_public_url(&url);
    let options = sovra_server::serve::HttpOptions::from_config(config);
    let server = tokio::spawn(async move {
        let _ =
            sovra_server::serve::serve_http(listener, app, options, std::future::pending()).await;
    });
    Ok(Served {
        url,
        key,
        default_anon,
        default_secret_key,
        platform,
        server,
    })
}

pub(crate) async fn serve_on(config: &sovra_config::Config, db: &TestDb) -> Served {
    try_serve_on(config, db).await.unwrap()
}

/// A server of [`try_serve_on`].
pub(crate) struct Served {
    pub url: String,
    pub key: String,
    pub default_anon: String,
    pub default_secret_key: String,
    pub platform: Arc<Platform>,
    pub server: tokio::task::JoinHandle<()>,
}

/// A mail server that accepts every message and hands over (sender, data).
pub(crate) async fn fake_smtp() -> (u16, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = tokio::io::BufReader::new(read).lines();
                let _ = write.write_all(b"220 fake ESMTP\r\n").await;
                let mut from = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let answer: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 fake\r\n"
                    } else if upper.starts_with("MAIL FROM:") {
                        from = line[10..].trim().to_owned();
                        b"250 OK\r\n"
                    } else if upper.starts_with("DATA") {
                        let _ = write.write_all(b"354 go on\r\n").await;
                        let mut data = String::new();
                        while let Ok(Some(line)) = lines.next_line().await {
                            if line == "." {
                                break;
                            }
                            data.push_str(&line);
                            data.push('\n');
                        }
                        let _ = tx.send((from.clone(), data));
                        b"250 OK\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 OK\r\n"
                    };
                    if write.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}
