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
    let data_dir = sovra_test_support::scratch_dir();
    config.data_dir = data_dir.clone();
    let default_secret_key =
        sovra_server::keys::rotate_opaque(&data_dir.join("keys.json"), &config)
            .unwrap()
            .secret;
    let mut keys =
        sovra_server::keys::load_or_create(&data_dir.join("keys.json"), &config).unwrap();
    let default_anon = keys.api.anon.clone();
    let key = sovra_server::platform::load_or_create(&data_dir.join("platform.key"))
        .unwrap()
        .key;
    // As `sovra serve` does: the default tenant refuses the tenants' refs.
    let platform = Arc::new(Platform::new(&config, db.config(), &key).unwrap());
    platform.refresh_names().await.unwrap();
    keys.keyset = keys.keyset.with_foreign_refs(platform.ref_guard());
    let tenant = sovra_server::serve::build_tenant(
        &config,
        db.config_as("authenticator"),
        db.config(),
        keys,
    )
    .await
    .unwrap();
    let resolver = sovra_server::TenantResolver::single(tenant);
    let default = resolver.default_tenant();
    let state =
        sovra_server::AppState::from_config(resolver, &config).with_platform(platform.clone());
    let app = sovra_server::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    default.auth.set_external_url(&url);
    platform.set_public_url(&url);
    let options = sovra_server::serve::HttpOptions::from_config(&config);
    let server = tokio::spawn(async move {
        let _ =
            sovra_server::serve::serve_http(listener, app, options, std::future::pending()).await;
    });
    Spawned {
        url,
        key,
        default_anon,
        default_secret_key,
        db,
        platform,
        server,
    }
}
