//! The test harness (a dev-dependency only). Once per test process it starts
//! a private PostgreSQL cluster with the same code as the embedded default
//! (or uses the server at `SOVRA_TEST_DATABASE_URL`) and migrates a template
//! database; every test then gets its own database cloned from the template
//! ([`TestDb`], dropped afterwards) and, when it needs HTTP, the real router
//! served on `127.0.0.1:0` ([`TestApp`]). Tests in parallel never share a
//! database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use rand::Rng as _;
use serde_json::{Map, Value};
use sovra_pg::tokio_postgres::{self, Config as PgConfig};
use sovra_pg::{Cluster, ClusterOptions};
use tokio::sync::OnceCell;

/// Where the shared server is and which template to clone.
struct Shared {
    /// Superuser connection settings (database left to the caller).
    admin: PgConfig,
    template: String,
    /// Keeps the private cluster alive for the whole process; its
    /// PostgreSQL gets SIGINT when the process exits.
    _cluster: Option<Cluster>,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();

/// The root of this process's private clusters.
fn scratch_root() -> PathBuf {
    std::env::temp_dir().join("sovra-test")
}

/// Removes directories that test processes no longer alive left behind.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(scratch_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A fresh scratch directory for this process (`<tmp>/sovra-test/<pid>-<n>`),
/// open to other users so that PostgreSQL, run as `postgres` when the tests
/// run as root, can reach its cluster below it.
pub fn scratch_dir() -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let root = scratch_root();
    std::fs::create_dir_all(&root).unwrap();
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777));
    let suffix: u32 = rand::thread_rng().r#gen();
    let dir = root.join(format!("{}-{suffix:08x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Settings that make a throwaway cluster fast; durability is not wanted.
pub fn fast_settings() -> Vec<(String, String)> {
    [
        ("fsync", "off"),
        ("synchronous_commit", "off"),
        ("full_page_writes", "off"),
        ("max_connections", "300"),
        ("shared_buffers", "32MB"),
        // Few walsenders: a test can hold them all to see the change feed
        // fall back to polling.
        ("max_wal_senders", "10"),
        // The read-replica tests' standbys stream without slots, some with
        // replay paused while other tests write: the primary keeps enough
        // WAL that a standby never needs a segment it has already removed
        // (a standby that does can never catch up).
        ("wal_keep_size", "1GB"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

async fn shared() -> &'static Shared {
    SHARED
        .get_or_init(|| async {
            let (admin, cluster, template) = match std::env::var("SOVRA_TEST_DATABASE_URL") {
                Ok(url) => {
                    let config = PgConfig::from_str(&url)
                        .expect("SOVRA_TEST_DATABASE_URL is not a valid URL");
                    let suffix: u32 = rand::thread_rng().r#gen();
                    (
                        config,
                        None,
                        format!("sovra_tpl_{}_{suffix:08x}", std::process::id()),
                    )
                }
                Err(_) => {
                    sweep_stale();
                    let mut options = ClusterOptions::new(scratch_dir().join("pg"));
                    options.settings = fast_settings();
                    let cluster = Cluster::start(options)
                        .await
                        .expect("starting the test cluster");
                    let admin = cluster.connect_config(sovra_pg::cluster::SUPERUSER, "postgres");
                    (admin, Some(cluster), "sovra_template".to_owned())
                }
            };
            let mut postgres = admin.clone();
            postgres.dbname("postgres");
            let client = sovra_pg::connect_one(&postgres)
                .await
                .expect("connecting to the test server");
            client
                .batch_execute(&format!("create database \"{template}\""))
                .await
                .expect("creating the template database");
            drop(client);
            let mut template_config = admin.clone();
            template_config.dbname(&template);
            let mut client = sovra_pg::connect_one(&template_config).await.unwrap();
            sovra_pg::migrate(&mut client)
                .await
                .expect("migrating the template database");
            // Clones inherit the pools' login passwords, so tests running
            // side by side never set them (cluster-wide) at once.
            sovra_pg::logins::prepare(&client, false)
                .await
                .expect("preparing the login roles");
            drop(client);
            // Cloning needs the template to have no open connections; the
            // dropped client may still be closing.
            wait_no_connections(&postgres, &template).await;
            Shared {
                admin,
                template,
                _cluster: cluster,
            }
        })
        .await
}

async fn wait_no_connections(admin: &PgConfig, dbname: &str) {
    let client = sovra_pg::connect_one(admin).await.unwrap();
    for _ in 0..200 {
        let row = client
            .query_one(
                "select count(*) from pg_stat_activity where datname = $1",
                &[&dbname],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A database of its own for one test, cloned from the migrated template
/// and dropped when the value is dropped.
pub struct TestDb {
    pub name: String,
    admin: PgConfig,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let shared = shared().await;
        let suffix: u64 = rand::thread_rng().r#gen();
        let name = format!("sovra_test_{suffix:016x}");
        let mut postgres = shared.admin.clone();
        postgres.dbname("postgres");
        let client = sovra_pg::connect_one(&postgres).await.unwrap();
        client
            .batch_execute(&format!(
                "create database \"{name}\" template \"{}\"",
                shared.template
            ))
            .await
            .expect("cloning the template database");
        TestDb {
            name,
            admin: shared.admin.clone(),
        }
    }

    /// Superuser connection settings for this database.
    pub fn config(&self) -> PgConfig {
        let mut config = self.admin.clone();
        config.dbname(&self.name);
        config
    }

    /// Connection settings for this database as `user` (the harness cluster
    /// trusts its socket, so any role with LOGIN works).
    pub fn config_as(&self, user: &str) -> PgConfig {
        let mut config = self.config();
        config.user(user);
        config
    }

    /// A superuser client on this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        sovra_pg::connect_one(&self.config()).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let mut postgres = self.admin.clone();
        postgres.dbname("postgres");
        let name = self.name.clone();
        // Drop runs outside async; use a small runtime of its own.
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(client) = sovra_pg::connect_one(&postgres).await {
                    // A logical replication slot (the realtime change feed's)
                    // keeps a database from being dropped: end its users,
                    // then drop its slots, then the database.
                    for _ in 0..50 {
                        let _ = client
                            .execute(
                                "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1",
                                &[&name],
                            )
                            .await;
                        let _ = client
                            .query_one(
                                "select count(*) from (select pg_drop_replication_slot(slot_name)
                                   from pg_replication_slots where database = $1 and not active) d",
                                &[&name],
                            )
                            .await;
                        let remaining = client
                            .query_one("select count(*) from pg_replication_slots where database = $1", &[&name])
                            .await
                            .map(|row| row.get::<_, i64>(0))
                            .unwrap_or(0);
                        if remaining == 0 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let _ = client
                        .batch_execute(&format!("drop database if exists \"{name}\" with (force)"))
                        .await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// The server, with the same router `sovra serve` builds, on a test
/// database, listening on `127.0.0.1:0`.
pub struct TestApp {
    pub url: String,
    pub anon_key: String,
    pub service_role_key: String,
    pub tenant: std::sync::Arc<sovra_server::Tenant>,
    /// Shared with peers started by [`TestApp::spawn_peer`].
    pub db: std::sync::Arc<TestDb>,
    pub data_dir: PathBuf,
    server: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// Spawns the server with the default configuration.
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(sovra_config::Config::default()).await
    }

    /// Spawns the server with `config` (its data directory and listen
    /// address are replaced by fresh ones).
    pub async fn spawn_with(config: sovra_config::Config) -> TestApp {
        let db = std::sync::Arc::new(TestDb::new().await);
        TestApp::spawn_on(config, db, None).await
    }

    /// Another server on the same database with the same keys (a second
    /// instance behind a load balancer), configured by `config`.
    pub async fn spawn_peer(&self, config: sovra_config::Config) -> TestApp {
        TestApp::spawn_on(config, self.db.clone(), Some(&self.data_dir)).await
    }

    async fn spawn_on(
        mut config: sovra_config::Config,
        db: std::sync::Arc<TestDb>,
        keys_from: Option<&std::path::Path>,
    ) -> TestApp {
        let data_dir = scratch_dir();
        config.data_dir = data_dir.clone();
        if let Some(from) = keys_from {
            std::fs::copy(from.join("keys.json"), data_dir.join("keys.json"))
                .expect("copying the keys to a peer");
            // Auth's key (sealed TOTP secrets, refresh successors), once made.
            if from.join("auth.key").exists() {
                std::fs::copy(from.join("auth.key"), data_dir.join("auth.key"))
                    .expect("copying the auth key to a peer");
            }
        }
        let keys = sovra_server::keys::load_or_create(&data_dir.join("keys.json"), &config)
            .expect("making test keys");
        let anon_key = keys.api.anon.clone();
        let service_role_key = keys.api.service_role.clone();
        let tenant = sovra_server::serve::build_tenant(
            &config,
            db.config_as("authenticator"),
            db.config(),
            keys,
        )
        .await
        .expect("building the test tenant");
        let resolver = sovra_server::TenantResolver::single(tenant);
        let tenant = resolver.all().remove(0);
        let state = sovra_server::AppState::from_config(resolver, &config);
        let app = sovra_server::app(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tenant.auth.set_external_url(&format!("http://{addr}"));
        let options = sovra_server::serve::HttpOptions::from_config(&config);
        let server = tokio::spawn(async move {
            let _ = sovra_server::serve::serve_http(listener, app, options, std::future::pending())
                .await;
        });
        TestApp {
            url: format!("http://{addr}"),
            anon_key,
            service_role_key,
            tenant,
            db,
            data_dir,
            server,
        }
    }

    /// Signs `claims` with the server's active key (a user's access token).
    pub fn sign(&self, claims: Value) -> String {
        let Value::Object(map) = claims else {
            panic!("claims must be an object");
        };
        self.tenant.keys.sign(&map).unwrap()
    }

    /// Seconds since the Unix epoch.
    pub fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// Claims of a signed-in user with id `sub`, valid for an hour.
    pub fn user_claims(sub: &str) -> Map<String, Value> {
        let now = TestApp::now();
        let Value::Object(map) = serde_json::json!({
            "sub": sub,
            "role": "authenticated",
            "aud": "authenticated",
            "email": format!("{sub}@example.com"),
            "iat": now,
            "exp": now + 3600,
        }) else {
            unreachable!()
        };
        map
    }
}

/// A streaming standby (read replica) of this process's test cluster:
/// `pg_basebackup -R` of the running cluster into a new directory, started
/// as a hot standby on a Unix socket of its own, as the cluster's system
/// user. Needs the harness's own cluster (not `SOVRA_TEST_DATABASE_URL`).
pub struct Replica {
    cluster: Option<Cluster>,
    pub dir: PathBuf,
}

impl Replica {
    /// Takes a base backup of the test cluster and starts it as a standby.
    pub async fn start() -> Replica {
        let shared = shared().await;
        let primary = shared._cluster.as_ref().expect(
            "read replica tests start a standby of the harness's own cluster: unset SOVRA_TEST_DATABASE_URL",
        );
        let dir = scratch_dir().join("replica");
        // A backup needs two WAL senders: tests running side by side (each
        // standby holding one) may take them all for a moment.
        let mut attempts = 0;
        while let Err(err) = primary.base_backup(&dir) {
            attempts += 1;
            assert!(attempts < 50, "pg_basebackup of the test cluster: {err}");
            let _ = std::fs::remove_dir_all(&dir);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut options = ClusterOptions::new(&dir);
        options.settings = fast_settings();
        let cluster = Cluster::start(options).await.expect("starting the standby");
        Replica {
            cluster: Some(cluster),
            dir,
        }
    }

    /// The standby's URL for `database.read_urls` (its socket directory,
    /// percent-encoded).
    pub fn url(&self) -> String {
        let path = self.dir.display().to_string().replace('/', "%2F");
        format!("postgres://{path}:5432")
    }

    /// Superuser connection settings for `db` on the standby.
    pub fn config(&self, db: &TestDb) -> PgConfig {
        let mut config = PgConfig::new();
        config
            .host_path(&self.dir)
            .port(5432)
            .user(sovra_pg::cluster::SUPERUSER)
            .dbname(&db.name);
        config
    }

    /// A superuser client on `db` on the standby, once it has replayed the
    /// creation of `db`.
    pub async fn client(&self, db: &TestDb) -> tokio_postgres::Client {
        // Bounded generously: on a loaded machine replay can take a while.
        for _ in 0..3000 {
            if let Ok(client) = sovra_pg::connect_one(&self.config(db)).await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the standby never had database {}", db.name);
    }

    /// Waits until the standby has replayed everything the primary has
    /// written so far.
    pub async fn catch_up(&self, db: &TestDb) {
        let primary = db.client().await;
        let target: i64 = primary
            .query_one(sovra_rest::replicas::WRITE_LSN_SQL, &[])
            .await
            .unwrap()
            .get(0);
        let replica = self.client(db).await;
        for _ in 0..1500 {
            let caught_up: bool = replica
                .query_one(
                    "select (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8 >= $1",
                    &[&target],
                )
                .await
                .unwrap()
                .get(0);
            if caught_up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the standby did not replay up to {target}");
    }

    /// Stops the standby (fast shutdown).
    pub async fn stop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            cluster.stop(Duration::from_secs(10)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // The cluster's own drop tells PostgreSQL to stop; its directory
        // goes with the process's scratch directory.
        drop(self.cluster.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `nats-server` on a free loopback port, stopped when dropped.
pub struct NatsServer {
    pub url: String,
    child: std::process::Child,
    /// JetStream's store, removed when dropped.
    store: Option<PathBuf>,
}

impl NatsServer {
    /// Starts `nats-server` (from `PATH` or `/usr/sbin`) and waits until it
    /// accepts connections.
    pub async fn start() -> NatsServer {
        NatsServer::start_with(None, None).await
    }

    /// Starts `nats-server` that admits only `user` with `password`; its
    /// `url` carries them (`nats://user:password@127.0.0.1:port`).
    pub async fn start_with_password(user: &str, password: &str) -> NatsServer {
        NatsServer::start_with(None, Some((user, password))).await
    }

    /// Starts `nats-server -js` with a store of its own.
    pub async fn start_jetstream() -> NatsServer {
        let store = std::env::temp_dir().join(format!(
            "sovra-nats-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        NatsServer::start_with(Some(store), None).await
    }

    async fn start_with(store: Option<PathBuf>, login: Option<(&str, &str)>) -> NatsServer {
        let binary = std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join("nats-server"))
                    .find(|path| path.exists())
            })
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
        for _ in 0..20 {
            let port = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().port()
            };
            let mut args = vec![
                "-a".to_owned(),
                "127.0.0.1".to_owned(),
                "-p".to_owned(),
                port.to_string(),
            ];
            if let Some(store) = &store {
                args.extend(["-js".to_owned(), "-sd".to_owned()]);
                args.push(store.display().to_string());
            }
            if let Some((user, password)) = login {
                args.extend(["--user", user, "--pass", password].map(str::to_owned));
            }
            let mut child = std::process::Command::new(&binary)
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|err| panic!("starting {}: {err}", binary.display()));
            for _ in 0..100 {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return NatsServer {
                        url: match login {
                            Some((user, password)) => {
                                format!("nats://{user}:{password}@127.0.0.1:{port}")
                            }
                            None => format!("nats://127.0.0.1:{port}"),
                        },
                        child,
                        store,
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break; // the port was taken in between: try another
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nats-server did not start");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(store) = &self.store {
            let _ = std::fs::remove_dir_all(store);
        }
    }
}

/// A TCP proxy on a free loopback port to `target` (`host:port`), which a
/// test can cut (every connection through it closes, new ones are refused)
/// and heal: one instance cut off from a shared server.
pub struct TcpCut {
    pub port: u16,
    target: String,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TcpCut {
    /// Starts forwarding.
    pub async fn start(target: &str) -> TcpCut {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = TcpCut {
            port,
            target: target.to_owned(),
            task: std::sync::Mutex::new(None),
        };
        cut.serve(listener);
        cut
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                links.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            // Dropping the set aborts (and closes) every link.
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub async fn cut(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Forwards again, on the same port.
    pub async fn heal(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.serve(listener);
    }
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}
