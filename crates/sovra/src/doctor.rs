//! `sovra doctor`: checks what Sovra needs on this machine and says how to
//! fix what is missing.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sovra_config::Config;
use sovra_pg::PgBinaries;

struct Report {
    failures: usize,
}

impl Report {
    fn ok(&self, what: &str, detail: impl std::fmt::Display) {
        println!("  ok    {what}: {detail}");
    }
    fn warn(&self, what: &str, detail: impl std::fmt::Display) {
        println!("  warn  {what}: {detail}");
    }
    fn fail(&mut self, what: &str, detail: impl std::fmt::Display) {
        self.failures += 1;
        println!("  FAIL  {what}: {detail}");
    }
}

fn share_dir(binaries: &PgBinaries) -> PathBuf {
    let pg_config = binaries.bin_dir.join("pg_config");
    if let Ok(out) = std::process::Command::new(&pg_config)
        .arg("--sharedir")
        .output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    PathBuf::from(format!("/usr/share/postgresql/{}", binaries.major()))
}

pub(crate) async fn run(config: &Config) -> anyhow::Result<ExitCode> {
    let mut report = Report { failures: 0 };
    println!("sovra doctor");
    let embedded = config.database.url.is_none();

    match PgBinaries::find(config.embedded.bin_dir.as_deref()) {
        Ok(binaries) => {
            report.ok(
                "postgresql",
                format!("{} in {}", binaries.version, binaries.bin_dir.display()),
            );
            let control = share_dir(&binaries).join("extension/vector.control");
            if control.is_file() {
                report.ok("pgvector", control.display());
            } else {
                report.warn(
                    "pgvector",
                    "not installed: vector columns will be unavailable; run scripts/setup.sh (builds it from Debian's source package)",
                );
            }
        }
        Err(err) if embedded => report.fail("postgresql", err),
        Err(_) => report.warn(
            "postgresql",
            "no local server binaries (not needed: `database.url` is set)",
        ),
    }

    let mut run_as = None;
    if embedded && nix::unistd::geteuid().is_root() {
        match nix::unistd::User::from_name(&config.embedded.system_user) {
            Ok(Some(user)) => {
                report.ok(
                    "system user",
                    format!(
                        "running as root; postgresql will run as `{}` (uid {})",
                        user.name, user.uid
                    ),
                );
                run_as = Some(user);
            }
            _ => report.fail(
                "system user",
                format!(
                    "running as root, but user `{}` does not exist to run postgresql: install the postgresql package or set `embedded.system_user`",
                    config.embedded.system_user
                ),
            ),
        }
    }

    check_data_dir(&mut report, &config.data_dir, embedded);
    if let Some(user) = &run_as {
        check_reachable(&mut report, &config.data_dir, user);
    }

    let addr = config.listen_addr();
    match std::net::TcpListener::bind(addr) {
        Ok(_) => report.ok("http port", format!("{addr} is free")),
        Err(err) => report.fail(
            "http port",
            format!(
                "{addr} is not available ({err}): is Sovra already running? set `server.listen`"
            ),
        ),
    }
    if let Some(port) = config.embedded.port.filter(|_| embedded) {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_) => report.ok("postgresql port", format!("127.0.0.1:{port} is free")),
            Err(err) => report.warn(
                "postgresql port",
                format!(
                    "127.0.0.1:{port} is taken ({err}); fine if it is this Sovra's own PostgreSQL"
                ),
            ),
        }
    }

    if let Some(url) = &config.database.url {
        match url.parse::<sovra_pg::tokio_postgres::Config>() {
            Ok(pg) => match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                sovra_pg::connect_one(&pg),
            )
            .await
            {
                Ok(Ok(client)) => {
                    let version: String = client
                        .query_one("show server_version", &[])
                        .await
                        .map(|row| row.get(0))
                        .unwrap_or_default();
                    report.ok("database.url", format!("reachable, PostgreSQL {version}"));
                }
                Ok(Err(err)) => report.fail("database.url", format!("cannot connect: {err}")),
                Err(_) => report.fail("database.url", "no answer within 5 s"),
            },
            Err(err) => report.fail("database.url", format!("not a valid URL: {err}")),
        }
    }

    println!();
    if report.failures == 0 {
        println!("everything Sovra needs is here: run `sovra serve`");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} problem(s) found", report.failures);
        Ok(ExitCode::FAILURE)
    }
}

fn check_data_dir(report: &mut Report, dir: &Path, embedded: bool) {
    use std::os::unix::fs::PermissionsExt as _;
    if !dir.exists() {
        // The nearest directory above that exists: Sovra creates the rest.
        let mut parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        while !parent.is_dir() {
            match parent.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(up) => parent = up,
                None => break,
            }
        }
        let writable = tempfile_probe(parent);
        if writable {
            report.ok(
                "data dir",
                format!("{} will be created on first start", dir.display()),
            );
        } else {
            report.fail(
                "data dir",
                format!(
                    "{} cannot be created: {} is not writable",
                    dir.display(),
                    parent.display()
                ),
            );
        }
        return;
    }
    match std::fs::read_to_string(dir.join("sovra.lock")) {
        Ok(pid)
            if !pid.trim().is_empty() && Path::new(&format!("/proc/{}", pid.trim())).exists() =>
        {
            report.warn(
                "data dir",
                format!(
                    "{} is in use by a running Sovra (pid {})",
                    dir.display(),
                    pid.trim()
                ),
            );
        }
        _ => report.ok("data dir", dir.display()),
    }
    let keys = dir.join("keys.json");
    match std::fs::metadata(&keys) {
        Ok(meta) if meta.permissions().mode() & 0o077 == 0 => {
            report.ok("keys", format!("{} (mode 0600)", keys.display()))
        }
        Ok(meta) => report.fail(
            "keys",
            format!(
                "{} is readable by others (mode {:o}): chmod 600 it",
                keys.display(),
                meta.permissions().mode() & 0o777
            ),
        ),
        Err(_) => report.ok("keys", "will be created on first start"),
    }
    if embedded {
        let pg = dir.join("pg");
        match std::fs::read_to_string(pg.join("PG_VERSION")) {
            Ok(version) => report.ok("cluster", format!("PostgreSQL {} cluster in {}", version.trim(), pg.display())),
            Err(_) if pg.exists() => report.fail(
                "cluster",
                format!("{} exists but holds no cluster (no PG_VERSION); move it away so Sovra can create one", pg.display()),
            ),
            Err(_) => report.ok("cluster", "will be created on first start (initdb)"),
        }
    }
}

/// As root, the embedded PostgreSQL runs as `user`, which must pass through
/// every directory above the data directory (the data directory itself
/// Sovra opens to it). Asked of the kernel as that user: a child process
/// with its uid and gid and no supplementary groups, as the cluster is
/// started, tries to enter the nearest existing directory above.
fn check_reachable(report: &mut Report, dir: &Path, user: &nix::unistd::User) {
    use std::os::unix::process::CommandExt as _;
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let mut above = absolute.parent().unwrap_or(Path::new("/")).to_owned();
    while !above.is_dir() {
        match above.parent() {
            Some(parent) => above = parent.to_owned(),
            None => break,
        }
    }
    let entered = std::process::Command::new("test")
        .arg("-x")
        .arg(&above)
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .status();
    match entered {
        Ok(status) if status.success() => report.ok(
            "data dir reach",
            format!("`{}` can reach {}", user.name, above.display()),
        ),
        Ok(_) => report.fail(
            "data dir reach",
            format!(
                "`{}` (which runs postgresql, as Sovra is root) cannot reach {}: a directory above is closed to other users (as /root is); use a data directory it can reach (the default for root is {}; `--data-dir` or SOVRA_DATA_DIR) or open the way with `chmod o+x`",
                user.name,
                above.display(),
                sovra_config::ROOT_DATA_DIR
            ),
        ),
        Err(err) => report.warn(
            "data dir reach",
            format!("could not check as `{}`: {err}", user.name),
        ),
    }
}

fn tempfile_probe(dir: &Path) -> bool {
    let probe = dir.join(format!(".sovra-doctor-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
