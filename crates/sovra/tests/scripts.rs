//! Tests of the README's scripts as far as they can run without changing
//! the machine: what `scripts/setup.sh` installs for each mode (`--list`),
//! and `scripts/run.sh --dry-run`, which checks the data directory before
//! the build.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("bash");
    command.arg(repo().join("scripts").join(name)).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("SOVRA_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn run_installs_only_what_the_server_needs_and_test_the_rest() {
    let major = [("SOVRA_PG_MAJOR", "16")];
    let run = lines(&script("setup.sh", &["run", "--list"], &major));
    assert!(run.contains(&"postgresql-16".to_owned()), "{run:?}");
    assert!(
        run.contains(&"postgresql-16-pgvector".to_owned())
            || run.contains(&"postgresql-server-dev-16".to_owned()),
        "pgvector, packaged or built: {run:?}"
    );
    for test_only in ["nats-server", "python3-venv", "moto", "chromium", "haproxy"] {
        assert!(
            !run.iter().any(|pkg| pkg.starts_with(test_only)),
            "run.sh installs {test_only}: {run:?}"
        );
    }
    // Node.js builds the dashboard that the binary embeds.
    for pkg in ["nodejs", "npm"] {
        assert!(run.contains(&pkg.to_owned()), "{run:?}");
    }
    let test = lines(&script("setup.sh", &["test", "--list"], &major));
    for pkg in &run {
        assert!(test.contains(pkg), "test lacks {pkg}: {test:?}");
    }
    for test_only in [
        "nats-server",
        "nodejs",
        "npm",
        "python3-venv",
        "chromium",
        "haproxy",
    ] {
        assert!(test.contains(&test_only.to_owned()), "{test:?}");
    }
    assert!(
        test.iter()
            .any(|l| l.starts_with("moto[server]") && l.contains(".tools/venv")),
        "moto goes into the project's virtual environment: {test:?}"
    );
    // Nothing uses Redis; the contrib metapackage would pull the
    // distribution's default major.
    for list in [&run, &test] {
        assert!(!list.iter().any(|pkg| pkg.contains("redis")), "{list:?}");
        assert!(!list.contains(&"postgresql-contrib".to_owned()), "{list:?}");
    }
    // No mode is `test`, as before.
    assert_eq!(lines(&script("setup.sh", &["--list"], &major)), test);
}

#[test]
fn setup_refuses_an_unsupported_major_and_unknown_arguments() {
    let out = script("setup.sh", &["run", "--list"], &[("SOVRA_PG_MAJOR", "14")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PostgreSQL 14 is not supported") && err.contains("15, 16 or 17"),
        "{err}"
    );
    let out = script("setup.sh", &["--frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument --frobnicate"));
}

#[test]
fn run_checks_the_data_dir_before_the_build() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = std::env::temp_dir().join("sovra-scripts-test");
    std::fs::create_dir_all(&root).unwrap();
    let scratch = tempfile::tempdir_in(&root).unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let closed = scratch.path().join("home");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let inside = closed.join("app/sovra-data");
    let inside = inside.to_str().unwrap();

    let out = script("run.sh", &["--dry-run", "--data-dir", inside], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("Compiling") && !stderr.contains("Compiling"));
    if nix::unistd::geteuid().is_root() {
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(
            stderr.contains("`postgres`")
                && stderr.contains(&format!("cannot reach {}", closed.display()))
                && stderr.contains("--data-dir /var/lib/sovra"),
            "{stderr}"
        );
        // The same from the environment and from a configuration file.
        let out = script("run.sh", &["--dry-run"], &[("SOVRA_DATA_DIR", inside)]);
        assert_eq!(out.status.code(), Some(1));
        let config = scratch.path().join("sovra.toml");
        std::fs::write(&config, format!("data_dir = \"{inside}\"\n")).unwrap();
        let out = script(
            "run.sh",
            &["--dry-run", "--config", config.to_str().unwrap()],
            &[],
        );
        assert_eq!(out.status.code(), Some(1));
        // With no data directory configured, root gets one postgres
        // reaches (unless this checkout's ./sovra-data holds a project).
        let out = script("run.sh", &["--dry-run"], &[]);
        let text = lines(&out).join("\n");
        let expected = if repo().join("sovra-data/keys.json").exists() {
            "data directory ./sovra-data"
        } else {
            "data directory /var/lib/sovra"
        };
        assert!(text.contains(expected), "{text}");
    } else {
        let text = lines(&out).join("\n");
        assert!(text.contains(&format!("data directory {inside}")), "{text}");
    }
    // An external database needs no data directory for PostgreSQL.
    let out = script(
        "run.sh",
        &[
            "--dry-run",
            "--data-dir",
            inside,
            "--database-url",
            "postgres://db/app",
        ],
        &[],
    );
    let text = lines(&out).join("\n");
    assert!(text.contains("external database"), "{text}");
    // A reachable one passes.
    let open = scratch.path().join("data");
    let out = script(
        "run.sh",
        &["--dry-run", "--data-dir", open.to_str().unwrap()],
        &[],
    );
    let text = lines(&out).join("\n");
    assert!(
        text.contains(&format!("data directory {}", open.display())),
        "{text}"
    );
}

/// The reference layout in deploy/: HAProxy accepts its configuration (it
/// checks `/ready` on each node), systemd accepts the unit, and the compose
/// file runs three nodes on shared PostgreSQL, NATS and S3 with the drain
/// delay the balancer needs.
#[test]
fn deploy_reference_layout_is_valid() {
    let deploy = repo().join("deploy");
    let haproxy = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(deploy.join("haproxy.cfg"))
        .output()
        .expect("haproxy is installed by scripts/setup.sh test");
    assert!(
        haproxy.status.success(),
        "{}",
        String::from_utf8_lossy(&haproxy.stderr)
    );
    let cfg = std::fs::read_to_string(deploy.join("haproxy.cfg")).unwrap();
    assert!(cfg.contains("option httpchk GET /ready"), "{cfg}");
    assert!(
        cfg.contains("timeout tunnel"),
        "WebSockets stay open: {cfg}"
    );

    let unit = std::fs::read_to_string(deploy.join("sovra.service")).unwrap();
    for line in [
        "User=sovra",
        "ExecStart=/usr/local/bin/sovra serve --data-dir /var/lib/sovra",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/sovra",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing: {unit}");
    }
    // systemd's own parser, when this machine has one: unknown keys and
    // sections are reported on stderr.
    if let Ok(out) = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(deploy.join("sovra.service"))
        .output()
    {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("Unknown key") && !err.contains("Unknown section"),
            "{err}"
        );
    }

    let docker = std::fs::read_to_string(deploy.join("Dockerfile")).unwrap();
    assert!(docker.contains("FROM debian:bookworm-slim"), "{docker}");
    assert!(docker.contains("USER sovra"), "runs as non-root: {docker}");

    let compose = std::fs::read_to_string(deploy.join("compose.yaml")).unwrap();
    for needle in [
        "node1: *sovra",
        "node2: *sovra",
        "node3: *sovra",
        "SOVRA_DATABASE_URL:",
        "SOVRA_REALTIME_NATS_URL: nats://nats:4222",
        "SOVRA_STORAGE_BACKEND: s3",
        "SOVRA_SERVER_DRAIN_DELAY:",
        "command: [\"-js\"",
        "wal_level=logical",
    ] {
        assert!(
            compose.contains(needle),
            "{needle} missing from compose.yaml"
        );
    }
    // Every SOVRA_* name in the layout is an option Sovra knows.
    let known: Vec<String> = sovra_config::OPTIONS
        .iter()
        .map(|o| format!("SOVRA_{}", o.key.replace('.', "_").to_uppercase()))
        .collect();
    for text in [
        &unit,
        &compose,
        &std::fs::read_to_string(deploy.join("cluster.env.example")).unwrap(),
    ] {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("SOVRA_") && word.len() > "SOVRA_".len() {
                assert!(known.iter().any(|k| k == word), "{word} is not an option");
            }
        }
    }
}
