//! `sovra tenants` and the platform key, against the real binary on its
//! embedded PostgreSQL (whose pg_hba.conf asks tenant logins for their
//! passwords, so this also proves each tenant's own logins work).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn sovra() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sovra"));
    for (name, _) in std::env::vars() {
        if name.starts_with("SOVRA_") {
            command.env_remove(name);
        }
    }
    command
}

struct Server {
    child: Child,
    url: String,
    stdout: std::sync::mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = sovra()
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, stdout) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        stdout,
    }
}

async fn wait_ready(server: &mut Server) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let client = reqwest::Client::new();
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("sovra exited with {status}");
        }
        if let Ok(response) = client.get(format!("{}/ready", server.url)).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "sovra not ready in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tenants(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    sovra()
        .arg("tenants")
        .args(args)
        .args(["--url", url, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap()
}

fn json_of(output: &std::process::Output) -> Value {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn every_tenants_command_has_help() {
    for command in [
        vec!["tenants", "--help"],
        vec!["tenants", "create", "--help"],
        vec!["tenants", "list", "--help"],
        vec!["tenants", "show", "--help"],
        vec!["tenants", "update", "--help"],
        vec!["tenants", "suspend", "--help"],
        vec!["tenants", "resume", "--help"],
        vec!["tenants", "delete", "--help"],
    ] {
        let out = sovra().args(&command).output().unwrap();
        assert!(out.status.success(), "{command:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--json"), "{command:?}: {text}");
    }
}

#[tokio::test]
async fn tenants_are_managed_from_the_command_line() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = std::env::temp_dir().join("sovra-cli-test");
    std::fs::create_dir_all(&root).unwrap();
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777));
    let scratch = tempfile::Builder::new()
        .prefix("tenants-")
        .tempdir_in(&root)
        .unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = scratch.path().join("data");
    let mut server = start(&dir);
    wait_ready(&mut server).await;

    // The platform key: made on first start, printed once, 0600, and
    // shown by `sovra keys --json`.
    let key_file = dir.join("platform.key");
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !banner.contains("Platform key") && Instant::now() < deadline {
        if let Ok(line) = server.stdout.recv_timeout(Duration::from_millis(200)) {
            banner.push_str(&line);
            banner.push('\n');
        }
    }
    assert!(banner.contains(&key), "{banner}");
    let keys = sovra()
        .args(["keys", "--json", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(json_of(&keys)["platform_key"], key.as_str());

    let url = server.url.clone();
    let created = json_of(&tenants(&dir, &url, &["create", "acme", "--json"]));
    assert_eq!(created["name"], "acme");
    assert_eq!(created["url"], format!("{url}/t/acme"));
    assert_eq!(created["database"], "tenant_acme");
    let service = created["service_role_key"].as_str().unwrap().to_owned();
    // The tenant answers with its own logins on the embedded cluster.
    let root_doc = reqwest::Client::new()
        .get(format!("{url}/t/acme/rest/v1/"))
        .header("apikey", &service)
        .bearer_auth(&service)
        .send()
        .await
        .unwrap();
    assert_eq!(root_doc.status(), 200);
    let signup = reqwest::Client::new()
        .post(format!("{url}/t/acme/auth/v1/signup"))
        .header("apikey", created["anon_key"].as_str().unwrap())
        .json(&serde_json::json!({"email": "t@example.com", "password": "password1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 200);

    let list = tenants(&dir, &url, &["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("acme"));
    let listed = json_of(&tenants(&dir, &url, &["list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let shown = tenants(&dir, &url, &["show", "acme"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("service_role key") && text.contains(&service),
        "{text}"
    );
    let updated = json_of(&tenants(
        &dir,
        &url,
        &[
            "update",
            "acme",
            "--pool-size",
            "3",
            "--email-autoconfirm",
            "true",
            "--json",
        ],
    ));
    assert_eq!(updated["settings"]["pool_size"], 3);
    assert_eq!(updated["settings"]["email_autoconfirm"], true);
    let suspended = json_of(&tenants(&dir, &url, &["suspend", "acme", "--json"]));
    assert_eq!(suspended["state"], "suspended");
    let resumed = json_of(&tenants(&dir, &url, &["resume", "acme", "--json"]));
    assert_eq!(resumed["state"], "active");

    // Refusals: a bad name, a name taken, a wrong platform key.
    let bad = tenants(&dir, &url, &["create", "Bad_Name"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lowercase DNS label"));
    let taken = tenants(&dir, &url, &["create", "acme"]);
    assert!(!taken.status.success());
    assert!(String::from_utf8_lossy(&taken.stderr).contains("409"));
    let wrong = sovra()
        .args([
            "tenants",
            "list",
            "--url",
            &url,
            "--platform-key",
            "sovra_pk_wrong",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("403"));

    let deleted = tenants(&dir, &url, &["delete", "acme"]);
    assert!(deleted.status.success());
    assert!(String::from_utf8_lossy(&deleted.stdout).contains("deleted tenant acme"));
    let gone = tenants(&dir, &url, &["show", "acme"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("404"));
}
