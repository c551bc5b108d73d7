//! The hostile-input suite (issue #12, Proof): the real `sovra` binary on
//! the embedded default, in a fresh data directory, gets hundreds of
//! requests an attacker would send, over raw TCP so that nothing is
//! cleaned up on the way: broken REST grammar, deep nesting, huge and many
//! headers, forged JWTs, traversal object names, NUL bytes and invalid
//! UTF-8 in every kind of parameter, garbage WebSocket frames, malformed
//! multipart and TUS headers, auth bodies with wrong types and huge fields.
//!
//! Every case must get an answer below 500 (or, for a few listed cases
//! where closing the connection is the protocol's answer, no answer), no
//! case may leave a `panicked at` in the server's log, and the process must
//! be alive and answering `/health` after each case. A case that kills or
//! stalls the server is reported as such and the server is restarted, so
//! that later cases still mean something. All failures are listed together
//! at the end.
//!
//! Cases are generated here; the bulk lists of REST queries and JSON bodies
//! are data files in `tests/hostile/` (see its README) so that adding a
//! case needs no Rust.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::Mac as _;

const JWT_SECRET: &str = "hostile-suite-jwt-secret-0123456789-abcdef";
const REST_QUERIES: &str = include_str!("../../../tests/hostile/rest-queries.txt");
const JSON_BODIES: &str = include_str!("../../../tests/hostile/json-bodies.txt");
/// How long one case may take before it counts as a stall.
const CASE_TIMEOUT: Duration = Duration::from_secs(30);

/// Answers >= 500 that are documented as acceptable: (case name prefix,
/// status, why). Empty: no case may get one.
const ALLOWED_5XX: &[(&str, u16, &str)] = &[];

/// The server under attack.
struct Sovra {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: PathBuf,
    starts: u32,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sovra {
    fn start(dir: &Path, log: &Path, port: u16) -> Child {
        let out = File::options().create(true).append(true).open(log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sovra"));
        for (name, _) in std::env::vars() {
            if name.starts_with("SOVRA_") {
                command.env_remove(name);
            }
        }
        command
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("SOVRA_LOG_LEVEL", "info")
            .env("SOVRA_JWT_SECRET", JWT_SECRET)
            .env("SOVRA_AUTH_EMAIL_AUTOCONFIRM", "true")
            .env("SOVRA_AUTH_ANONYMOUS_USERS", "true")
            .env("SOVRA_AUTH_EMAIL_MAX_FREQUENCY", "0")
            .env("SOVRA_AUTH_RATE_LIMIT_SIGN_IN", "100000")
            .env("SOVRA_AUTH_RATE_LIMIT_VERIFY", "100000")
            .env("SOVRA_AUTH_RATE_LIMIT_OTP", "100000")
            .env("SOVRA_AUTH_RATE_LIMIT_TOKEN_REFRESH", "100000")
            .env("SOVRA_AUTH_RATE_LIMIT_ANONYMOUS", "100000")
            .env("SOVRA_AUTH_RATE_LIMIT_EMAIL_SENT", "100000")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        command.spawn().unwrap()
    }

    fn launch(root: &Path) -> Sovra {
        let dir = root.join("data");
        let log = root.join("sovra.log");
        let port = free_port();
        let child = Sovra::start(&dir, &log, port);
        let mut sovra = Sovra {
            child,
            port,
            dir,
            log,
            starts: 1,
        };
        sovra.wait_ready();
        sovra
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sovra exited with {status} at start: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let ready = http(
                self.port,
                &request("GET", "/ready", &[], b""),
                Duration::from_secs(5),
            );
            if matches!(ready, Outcome::Status(200, _)) {
                return;
            }
            assert!(Instant::now() < deadline, "sovra not ready in time");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process runs and answers `/health` within 10 s.
    fn healthy(&mut self) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("the process died ({status})"));
        }
        for _ in 0..2 {
            let health = http(
                self.port,
                &request("GET", "/health", &[], b""),
                Duration::from_secs(10),
            );
            if matches!(health, Outcome::Status(200, _)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("the process died ({status})"));
        }
        Err("the process stopped answering /health".to_owned())
    }

    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The embedded PostgreSQL follows its parent; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        self.child = Sovra::start(&self.dir, &self.log, self.port);
        self.starts += 1;
        self.wait_ready();
    }
}

impl Drop for Sovra {
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

/// What the server did with one request.
#[derive(Debug, Clone)]
enum Outcome {
    /// A status line, and the start of the response (for error messages).
    Status(u16, String),
    /// The connection closed without a response.
    Closed,
    /// No complete response head within the time allowed.
    Timeout,
}

/// One raw HTTP/1.1 request; `Host` and `Connection: close` are added.
fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    request_bytes(method, target.as_bytes(), headers, body)
}

fn request_bytes(method: &str, target: &[u8], headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() + body.len() + 256);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Sends `bytes` on a fresh connection and reads the response head.
fn http(port: u16, bytes: &[u8], timeout: Duration) -> Outcome {
    send(port, bytes, timeout, false)
}

/// Like [`http`]; with `half_close` the client then shuts its sending
/// side, so that a request the server is still waiting to complete (a
/// truncated body, an incomplete head) ends instead of waiting for a
/// header or body timeout (those are the slow-client tests' subject).
fn send(port: u16, bytes: &[u8], timeout: Duration, half_close: bool) -> Outcome {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return Outcome::Closed;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    // The server may answer (413, 431) and close before it has read all
    // of a huge request: a failed write still leaves a response to read.
    let _ = stream.write_all(bytes);
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    read_head(&mut stream, timeout)
}

fn read_head(stream: &mut TcpStream, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            return parse_status(&buf[..end]);
        }
        if Instant::now() > deadline {
            return Outcome::Timeout;
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                return if buf.is_empty() {
                    Outcome::Closed
                } else {
                    parse_status(&buf)
                };
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Outcome::Timeout;
            }
            Err(_) => {
                return if buf.is_empty() {
                    Outcome::Closed
                } else {
                    parse_status(&buf)
                };
            }
        }
    }
}

fn parse_status(head: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(head);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(code) if text.starts_with("HTTP/") => {
            Outcome::Status(code, text.chars().take(300).collect())
        }
        _ => Outcome::Closed,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A WebSocket frame as a client sends it (masked unless `masked` is
/// false); `length` overrides the length the header announces.
fn ws_frame(first: u8, masked: bool, payload: &[u8], length: Option<u64>) -> Vec<u8> {
    let mut out = vec![first];
    let len = length.unwrap_or(payload.len() as u64);
    let mask_bit = if masked { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn ws_text(payload: &str) -> Vec<u8> {
    ws_frame(0x81, true, payload.as_bytes(), None)
}

/// The result of a WebSocket case: the handshake's status and the close
/// code the server sent, if any.
fn websocket(port: u16, query: &str, extra: &[(&str, &str)], frames: &[Vec<u8>]) -> Outcome {
    let mut headers = vec![
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    headers.extend_from_slice(extra);
    let mut bytes = request_bytes(
        "GET",
        format!("/realtime/v1/websocket?{query}").as_bytes(),
        &headers,
        b"",
    );
    // `request` says `Connection: close`; an upgrade needs `Upgrade`.
    let text = String::from_utf8_lossy(&bytes).replace("Connection: close", "Connection: Upgrade");
    bytes = text.into_bytes();
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return Outcome::Closed;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    if stream.write_all(&bytes).is_err() {
        return Outcome::Closed;
    }
    let head = read_head(&mut stream, Duration::from_secs(10));
    let Outcome::Status(101, _) = head else {
        return head;
    };
    for frame in frames {
        if stream.write_all(frame).is_err() {
            break;
        }
    }
    // A clean close, then read what the server sends until it hangs up
    // (without shutting our side: the server would drop its replies).
    let _ = stream.write_all(&ws_frame(0x88, true, &1000u16.to_be_bytes(), None));
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
    match server_close_code(&received) {
        Some(1011) => Outcome::Status(500, "close 1011 (internal error)".to_owned()),
        code => Outcome::Status(101, format!("closed with {code:?}")),
    }
}

/// The code of the first close frame in what the server sent.
fn server_close_code(mut bytes: &[u8]) -> Option<u16> {
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => (
                usize::try_from(u64::from_be_bytes(bytes[2..10].try_into().ok()?)).ok()?,
                10,
            ),
            n if n < 126 => (usize::from(n), 2),
            _ => return None,
        };
        let payload = bytes.get(header..header + len)?;
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
        bytes = &bytes[header + len..];
    }
    None
}

/// One hostile case.
struct Case {
    name: String,
    run: Run,
    /// Closing the connection without a response is an acceptable answer
    /// (bytes that are not HTTP, requests larger than any limit).
    may_close: bool,
}

enum Run {
    Http(Vec<u8>),
    WebSocket {
        query: String,
        headers: Vec<(String, String)>,
        frames: Vec<Vec<u8>>,
    },
}

/// A case name for one output line: control characters shown as `?`.
fn printable(name: String) -> String {
    name.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn case(name: impl Into<String>, bytes: Vec<u8>) -> Case {
    Case {
        name: printable(name.into()),
        run: Run::Http(bytes),
        may_close: false,
    }
}

fn closing(name: impl Into<String>, bytes: Vec<u8>) -> Case {
    Case {
        name: printable(name.into()),
        run: Run::Http(bytes),
        may_close: true,
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with exactly this header and payload text, signed with HS256
/// under `secret` (whatever the header claims).
fn jwt_raw(header: &str, payload: &str, secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(payload.as_bytes())
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(signing_input.as_bytes());
    let signature = mac.finalize().into_bytes();
    format!("{signing_input}.{}", b64url(&signature))
}

fn jwt(claims: &serde_json::Value) -> String {
    jwt_raw(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims.to_string(),
        JWT_SECRET.as_bytes(),
    )
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

const USER_ID: &str = "0000000a-0000-4000-8000-00000000000a";

fn user_claims() -> serde_json::Value {
    serde_json::json!({
        "sub": USER_ID, "role": "authenticated", "aud": "authenticated",
        "email": "hostile@example.com", "iat": now(), "exp": now() + 3600,
    })
}

/// Percent-encodes everything but unreserved characters.
fn pct(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Reads a data file: one case per line, `#` comments and blank lines
/// skipped; `\xNN`, `\n`, `\r`, `\t` and `\\` escapes.
fn data_lines(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(unescape)
        .collect()
}

fn unescape(line: &str) -> Vec<u8> {
    let bytes = line.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'x' if i + 3 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).unwrap_or("zz");
                    if let Ok(value) = u8::from_str_radix(hex, 16) {
                        out.push(value);
                        i += 4;
                        continue;
                    }
                }
                b'n' => {
                    out.push(b'\n');
                    i += 2;
                    continue;
                }
                b'r' => {
                    out.push(b'\r');
                    i += 2;
                    continue;
                }
                b't' => {
                    out.push(b'\t');
                    i += 2;
                    continue;
                }
                b'\\' => {
                    out.push(b'\\');
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Keys and ids the cases use.
struct Fixture {
    anon: String,
    service: String,
    user: String,
    upload_id: String,
}

const FIXTURE_SQL: &str = r#"
create table public.items (
  id bigint generated by default as identity primary key,
  owner uuid default auth.uid(),
  name text,
  body jsonb,
  tags text[] not null default '{}',
  price numeric,
  created timestamptz default now()
);
alter table public.items enable row level security;
create policy items_read on public.items for select using (true);
create policy items_write on public.items for all to authenticated
  using (owner = auth.uid()) with check (owner = auth.uid());
grant all on public.items to anon, authenticated, service_role;
create table public.child (
  id bigint generated by default as identity primary key,
  item_id bigint references public.items,
  note text
);
grant all on public.child to anon, authenticated, service_role;
insert into public.items (owner, name, body, tags, price) values
  ('0000000a-0000-4000-8000-00000000000a', 'one', '{"a": {"b": 1}}', '{x,y}', 1.5),
  ('0000000a-0000-4000-8000-00000000000a', 'two', '[1, 2]', '{}', null);
insert into public.child (item_id, note) values (1, 'first');
create function public.echo(t text) returns text language sql stable as $$ select t $$;
create function public.sum_json(j jsonb) returns int language sql stable
  as $$ select coalesce(jsonb_array_length(j), 0) $$;
create policy hostile_all on storage.objects for all to authenticated
  using (bucket_id = 'hostile') with check (bucket_id = 'hostile');
create policy hostile_anon on storage.objects for select to anon using (bucket_id = 'hostile');
notify pgrst, 'reload schema';
"#;

fn body_of(port: u16, bytes: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn setup(sovra: &Sovra) -> Fixture {
    // The schema, straight into the embedded cluster over its socket.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = sovra_pg::tokio_postgres::Config::new();
        config
            .host_path(sovra.dir.join("pg"))
            .port(5432)
            .user("postgres")
            .dbname("postgres");
        let client = sovra_pg::connect_one(&config).await.unwrap();
        client.batch_execute(FIXTURE_SQL).await.unwrap();
    });
    let keys = Command::new(env!("CARGO_BIN_EXE_sovra"))
        .args(["keys", "--json", "--data-dir"])
        .arg(&sovra.dir)
        .env("SOVRA_JWT_SECRET", JWT_SECRET)
        .output()
        .unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    let anon = keys["anon_key"].as_str().unwrap().to_owned();
    let service = keys["service_role_key"].as_str().unwrap().to_owned();
    let user = jwt(&user_claims());
    // The schema cache reloads on NOTIFY; wait until it knows `items`.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let outcome = http(
            sovra.port,
            &request("GET", "/rest/v1/items", &[("apikey", &anon)], b""),
            Duration::from_secs(10),
        );
        if matches!(outcome, Outcome::Status(200, _)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "items never appeared: {outcome:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let bearer = format!("Bearer {service}");
    let (status, text) = body_of(
        sovra.port,
        &request(
            "POST",
            "/storage/v1/bucket",
            &[
                ("apikey", &service),
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            br#"{"id":"hostile","name":"hostile","public":true}"#,
        ),
    );
    assert_eq!(status, 200, "bucket: {text}");
    let user_bearer = format!("Bearer {user}");
    let metadata = format!(
        "bucketName {},objectName {},contentType {}",
        base64::engine::general_purpose::STANDARD.encode("hostile"),
        base64::engine::general_purpose::STANDARD.encode("tus/file.bin"),
        base64::engine::general_purpose::STANDARD.encode("application/octet-stream"),
    );
    let (status, text) = body_of(
        sovra.port,
        &request(
            "POST",
            "/storage/v1/upload/resumable",
            &[
                ("apikey", &anon),
                ("Authorization", &user_bearer),
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Length", "100"),
                ("Upload-Metadata", &metadata),
            ],
            b"",
        ),
    );
    assert_eq!(status, 201, "tus create: {text}");
    let location = text
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("location")
                .then(|| value.trim().to_owned())
        })
        .expect("a Location header");
    let upload_id = location.rsplit('/').next().unwrap().to_owned();
    Fixture {
        anon,
        service,
        user,
        upload_id,
    }
}

fn nest(open: &str, inner: &str, close: &str, depth: usize) -> String {
    let mut out = String::with_capacity((open.len() + close.len()) * depth + inner.len());
    for _ in 0..depth {
        out.push_str(open);
    }
    out.push_str(inner);
    for _ in 0..depth {
        out.push_str(close);
    }
    out
}

/// Alternating embeds `child(items(child(…)))`, `depth` levels.
fn embed_chain(depth: usize) -> String {
    let mut out = String::new();
    for level in 0..depth {
        out.push_str(if level % 2 == 0 { "child(" } else { "items(" });
    }
    out.push('*');
    out.push_str(&")".repeat(depth));
    out
}

fn rest_cases(f: &Fixture) -> Vec<Case> {
    let anon = [("apikey", f.anon.as_str())];
    let user_bearer = format!("Bearer {}", f.user);
    let as_user = [
        ("apikey", f.anon.as_str()),
        ("Authorization", user_bearer.as_str()),
    ];
    let json = [
        ("apikey", f.anon.as_str()),
        ("Authorization", user_bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let mut cases = Vec::new();
    for line in data_lines(REST_QUERIES) {
        let shown = String::from_utf8_lossy(&line)
            .chars()
            .take(80)
            .collect::<String>();
        let mut target = b"/rest/v1/".to_vec();
        target.extend_from_slice(&line);
        cases.push(case(
            format!("rest GET anon {shown}"),
            request_bytes("GET", &target, &anon, b""),
        ));
        cases.push(case(
            format!("rest GET user {shown}"),
            request_bytes("GET", &target, &as_user, b""),
        ));
        cases.push(case(
            format!("rest HEAD {shown}"),
            request_bytes("HEAD", &target, &anon, b""),
        ));
        cases.push(case(
            format!("rest DELETE user {shown}"),
            request_bytes("DELETE", &target, &as_user, b""),
        ));
    }
    // Deep nesting: the grammar, the planner and the printer must bound it.
    for depth in [3000, 100_000] {
        let or = nest("and(", "id.eq.1", ")", depth);
        cases.push(case(
            format!("rest deep or/and {depth}"),
            request("GET", &format!("/rest/v1/items?or=({or})"), &anon, b""),
        ));
        cases.push(case(
            format!("rest deep embed {depth}"),
            request(
                "GET",
                &format!("/rest/v1/items?select={}", embed_chain(depth)),
                &anon,
                b"",
            ),
        ));
        cases.push(case(
            format!("rest deep select parens {depth}"),
            request(
                "GET",
                &format!("/rest/v1/items?select={}", nest("a(", "b", ")", depth)),
                &anon,
                b"",
            ),
        ));
        cases.push(case(
            format!("rest deep not {depth}"),
            request(
                "GET",
                &format!("/rest/v1/items?id={}eq.1", "not.".repeat(depth)),
                &anon,
                b"",
            ),
        ));
    }
    for depth in [40, 100] {
        cases.push(case(
            format!("rest embed chain {depth}"),
            request(
                "GET",
                &format!("/rest/v1/items?select={}", embed_chain(depth)),
                &anon,
                b"",
            ),
        ));
    }
    cases.push(case(
        "rest deep json path 3000",
        request(
            "GET",
            &format!("/rest/v1/items?select=body{}", "->a".repeat(3000)),
            &anon,
            b"",
        ),
    ));
    cases.push(case(
        "rest deep casts 3000",
        request(
            "GET",
            &format!("/rest/v1/items?select=id{}", "::text".repeat(3000)),
            &anon,
            b"",
        ),
    ));
    cases.push(case(
        "rest deep in-list parens 3000",
        request(
            "GET",
            &format!("/rest/v1/items?id=in.{}", nest("(", "1", ")", 3000)),
            &anon,
            b"",
        ),
    ));
    cases.push(case(
        "rest wide or 20000 terms",
        request(
            "GET",
            &format!("/rest/v1/items?or=({})", vec!["id.eq.1"; 20_000].join(",")),
            &anon,
            b"",
        ),
    ));
    cases.push(case(
        "rest wide select 20000 columns",
        request(
            "GET",
            &format!("/rest/v1/items?select={}", vec!["id"; 20_000].join(",")),
            &anon,
            b"",
        ),
    ));
    cases.push(case(
        "rest wide order 5000",
        request(
            "GET",
            &format!("/rest/v1/items?order={}", vec!["id.desc"; 5000].join(",")),
            &anon,
            b"",
        ),
    ));
    cases.push(case(
        "rest 5000 filters",
        request(
            "GET",
            &format!("/rest/v1/items?{}", vec!["id=gt.0"; 5000].join("&")),
            &anon,
            b"",
        ),
    ));
    // JSON bodies nested 10,000 deep, to tables and functions.
    for (what, body) in [
        ("array", nest("[", "1", "]", 10_000)),
        ("object", nest("{\"a\":", "1", "}", 10_000)),
        (
            "row with deep body",
            format!(
                "{{\"name\":\"x\",\"body\":{}}}",
                nest("[", "1", "]", 10_000)
            ),
        ),
    ] {
        for (method, target) in [
            ("POST", "/rest/v1/items"),
            ("PATCH", "/rest/v1/items?id=eq.1"),
            ("POST", "/rest/v1/rpc/sum_json"),
            ("POST", "/rest/v1/rpc/echo"),
        ] {
            cases.push(case(
                format!("rest {method} {target} deep {what}"),
                request(method, target, &json, body.as_bytes()),
            ));
        }
    }
    // Headers PostgREST reads.
    for prefer in [
        "count=exact",
        "count=planned",
        "count=estimated",
        "count=",
        "count=exact,count=planned",
        "return=representation,return=minimal",
        "return=\u{7f}",
        "resolution=merge-duplicates",
        "resolution=bogus",
        "tx=rollback",
        "tx=commit;tx=rollback",
        "max-affected=abc",
        "max-affected=-1",
        "max-affected=99999999999999999999999",
        "missing=default",
        "params=single-object",
        "handling=strict, foo=bar",
        "handling=strict,return=representation,count=exact,max-affected=0",
        "timezone=Mars/Phobos",
        "timezone=';drop table items;--",
        ";;;,,,==",
        "=",
    ] {
        for (method, target, body) in [
            ("GET", "/rest/v1/items", &b""[..]),
            ("POST", "/rest/v1/items", &br#"{"name":"p"}"#[..]),
            ("PATCH", "/rest/v1/items?id=eq.-1", &br#"{"name":"p"}"#[..]),
            ("POST", "/rest/v1/rpc/echo", &br#"{"t":"x"}"#[..]),
        ] {
            let mut headers = json.to_vec();
            headers.push(("Prefer", prefer));
            cases.push(case(
                format!("rest {method} {target} Prefer: {prefer}"),
                request(method, target, &headers, body),
            ));
        }
    }
    let long_prefer = format!("count=exact,{}", "x=y,".repeat(2000));
    let mut headers = anon.to_vec();
    headers.push(("Prefer", &long_prefer));
    cases.push(case(
        "rest long Prefer",
        request("GET", "/rest/v1/items", &headers, b""),
    ));
    for range in [
        "",
        "0-",
        "-",
        "5-2",
        "-1",
        "a-b",
        "0-99999999999999999999999",
        "99999999999999999999-",
        "0-1,2-3",
        "items=0-1",
        "\u{7f}",
    ] {
        for unit in [None, Some("items"), Some("bytes"), Some("")] {
            let mut headers = anon.to_vec();
            headers.push(("Range", range));
            if let Some(unit) = unit {
                headers.push(("Range-Unit", unit));
            }
            cases.push(case(
                format!("rest Range {range:?} unit {unit:?}"),
                request("GET", "/rest/v1/items", &headers, b""),
            ));
        }
    }
    for accept in [
        "application/vnd.pgrst.object+json",
        "application/vnd.pgrst.object+json;nulls=stripped",
        "application/vnd.pgrst.array+json;nulls=wrong",
        "application/vnd.pgrst.plan+json",
        "application/vnd.pgrst.plan+text; for=\"application/json\"; options=analyze|verbose",
        "text/csv",
        "application/openapi+json",
        "application/geo+json",
        "*/*;q=abc",
        "text/html, */*;q=0",
        ";;;",
    ] {
        let mut headers = anon.to_vec();
        headers.push(("Accept", accept));
        cases.push(case(
            format!("rest Accept {accept}"),
            request("GET", "/rest/v1/items", &headers, b""),
        ));
        cases.push(case(
            format!("rest rpc Accept {accept}"),
            request("GET", "/rest/v1/rpc/echo?t=x", &headers, b""),
        ));
    }
    for profile in ["nope", "pg_catalog", "auth", "", "public,auth", "\u{7f}"] {
        for header in ["Accept-Profile", "Content-Profile"] {
            let mut headers = json.to_vec();
            headers.push((header, profile));
            cases.push(case(
                format!("rest {header}: {profile:?}"),
                request("POST", "/rest/v1/items", &headers, br#"{"name":"x"}"#),
            ));
        }
    }
    for content_type in [
        "text/csv",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "text/plain",
        "application/json; charset=latin1",
        "multipart/form-data; boundary=x",
        "",
    ] {
        let mut headers = as_user.to_vec();
        headers.push(("Content-Type", content_type));
        for body in [
            &b"name,price\none,1\n\"unterminated"[..],
            &b"name=a&name=b&%ff=%00"[..],
            &b"\xff\xfe\x00garbage"[..],
        ] {
            cases.push(case(
                format!(
                    "rest POST Content-Type {content_type:?} body {}",
                    String::from_utf8_lossy(&body[..8.min(body.len())])
                ),
                request("POST", "/rest/v1/items", &headers, body),
            ));
        }
    }
    cases.push(case(
        "rest POST CSV with 2000 columns",
        request(
            "POST",
            "/rest/v1/items",
            &[
                ("apikey", f.anon.as_str()),
                ("Authorization", user_bearer.as_str()),
                ("Content-Type", "text/csv"),
            ],
            format!(
                "{}\n{}\n",
                vec!["name"; 2000].join(","),
                vec!["x"; 2000].join(",")
            )
            .as_bytes(),
        ),
    ));
    cases
}

/// Request headers as `(name, value)` pairs.
type Headers<'a> = &'a [(&'a str, &'a str)];

fn json_body_cases(f: &Fixture) -> Vec<Case> {
    let user_bearer = format!("Bearer {}", f.user);
    let service_bearer = format!("Bearer {}", f.service);
    let user = [
        ("apikey", f.anon.as_str()),
        ("Authorization", user_bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let service = [
        ("apikey", f.service.as_str()),
        ("Authorization", service_bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let anon = [
        ("apikey", f.anon.as_str()),
        ("Content-Type", "application/json"),
    ];
    let targets: &[(&str, &str, Headers)] = &[
        ("POST", "/rest/v1/items", &user),
        ("PATCH", "/rest/v1/items?id=eq.1", &user),
        ("POST", "/rest/v1/rpc/echo", &anon),
        ("POST", "/auth/v1/signup", &anon),
        ("POST", "/auth/v1/token?grant_type=password", &anon),
        ("POST", "/auth/v1/token?grant_type=refresh_token", &anon),
        ("POST", "/auth/v1/otp", &anon),
        ("POST", "/auth/v1/verify", &anon),
        ("PUT", "/auth/v1/user", &user),
        ("POST", "/auth/v1/factors", &user),
        ("POST", "/auth/v1/admin/users", &service),
        ("POST", "/auth/v1/admin/generate_link", &service),
        ("POST", "/storage/v1/bucket", &service),
        ("POST", "/storage/v1/object/list/hostile", &user),
        ("POST", "/storage/v1/object/move", &user),
        ("POST", "/storage/v1/object/sign/hostile/a.txt", &user),
        ("DELETE", "/storage/v1/object/hostile", &user),
        ("POST", "/realtime/v1/api/broadcast", &service),
    ];
    let mut cases = Vec::new();
    for body in data_lines(JSON_BODIES) {
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(60)
            .collect::<String>();
        for (method, target, headers) in targets {
            cases.push(case(
                format!("json {method} {target} {shown}"),
                request(method, target, headers, &body),
            ));
        }
    }
    // Huge fields.
    let big = "a".repeat(1 << 20);
    for (what, body) in [
        (
            "1 MB password",
            format!(r#"{{"email":"big@example.com","password":"{big}"}}"#),
        ),
        (
            "1 MB email",
            format!(r#"{{"email":"{big}@example.com","password":"password-1"}}"#),
        ),
        (
            "1 MB metadata",
            format!(
                r#"{{"email":"meta@example.com","password":"password-1","data":{{"x":"{big}"}}}}"#
            ),
        ),
        (
            "deep metadata",
            format!(
                r#"{{"email":"deep@example.com","password":"password-1","data":{}}}"#,
                nest("{\"a\":", "1", "}", 10_000)
            ),
        ),
        (
            "many keys",
            format!(
                "{{{}\"email\":\"k@example.com\"}}",
                (0..50_000)
                    .map(|i| format!("\"k{i}\":1,"))
                    .collect::<String>()
            ),
        ),
    ] {
        for target in [
            "/auth/v1/signup",
            "/auth/v1/token?grant_type=password",
            "/auth/v1/otp",
            "/auth/v1/recover",
        ] {
            cases.push(case(
                format!("auth {target} {what}"),
                request("POST", target, &anon, body.as_bytes()),
            ));
        }
    }
    // Grants and verification with odd parameters.
    for target in [
        "/auth/v1/token",
        "/auth/v1/token?grant_type=",
        "/auth/v1/token?grant_type=client_credentials",
        "/auth/v1/token?grant_type=pkce",
        "/auth/v1/token?grant_type=id_token",
        "/auth/v1/token?grant_type=password&grant_type=refresh_token",
        "/auth/v1/token?grant_type=%00",
        "/auth/v1/token?grant_type=%ff",
    ] {
        cases.push(case(
            format!("auth grant {target}"),
            request(
                "POST",
                target,
                &anon,
                br#"{"auth_code":"x","code_verifier":"y","refresh_token":"z"}"#,
            ),
        ));
    }
    let anon_only = [("apikey", f.anon.as_str())];
    for query in [
        "token=x&type=signup",
        "token=x&type=nonsense",
        "token=&type=",
        "type=magiclink",
        "token=x&type=recovery&redirect_to=javascript:alert(1)",
        "token=x&type=invite&redirect_to=https://evil.example/%0d%0aSet-Cookie:x",
        "token=%00&type=%00",
        "token=%ff%fe&type=email",
        &format!("token={}&type=signup", "a".repeat(100_000)),
    ] {
        cases.push(case(
            format!("auth GET verify {}", &query[..query.len().min(60)]),
            request("GET", &format!("/auth/v1/verify?{query}"), &anon_only, b""),
        ));
    }
    let user_only = [
        ("apikey", f.anon.as_str()),
        ("Authorization", user_bearer.as_str()),
    ];
    let service_only = [
        ("apikey", f.service.as_str()),
        ("Authorization", service_bearer.as_str()),
    ];
    for (method, target, headers) in [
        ("GET", "/auth/v1/user", &user_only[..]),
        ("POST", "/auth/v1/logout?scope=everything", &user_only[..]),
        ("POST", "/auth/v1/logout?scope=%00", &user_only[..]),
        ("GET", "/auth/v1/sessions", &user_only[..]),
        ("DELETE", "/auth/v1/sessions/not-a-uuid", &user_only[..]),
        ("DELETE", "/auth/v1/sessions/%00", &user_only[..]),
        (
            "POST",
            "/auth/v1/factors/not-a-uuid/challenge",
            &user_only[..],
        ),
        (
            "POST",
            "/auth/v1/factors/00000000-0000-0000-0000-000000000000/verify",
            &user_only[..],
        ),
        ("DELETE", "/auth/v1/factors/..%2F..%2Fadmin", &user_only[..]),
        ("GET", "/auth/v1/reauthenticate", &user_only[..]),
        ("GET", "/auth/v1/admin/users", &user_only[..]),
        (
            "GET",
            "/auth/v1/admin/users?page=-1&per_page=99999999999",
            &service_only[..],
        ),
        (
            "GET",
            "/auth/v1/admin/users?page=abc&per_page=%00",
            &service_only[..],
        ),
        ("GET", "/auth/v1/admin/users/not-a-uuid", &service_only[..]),
        ("GET", "/auth/v1/admin/users/%00", &service_only[..]),
        ("PUT", "/auth/v1/admin/users/not-a-uuid", &service_only[..]),
        (
            "DELETE",
            "/auth/v1/admin/users/00000000-0000-0000-0000-000000000000",
            &service_only[..],
        ),
        (
            "GET",
            "/auth/v1/admin/users/00000000-0000-0000-0000-000000000000/factors",
            &service_only[..],
        ),
        (
            "DELETE",
            "/auth/v1/admin/invite_codes/%ff",
            &service_only[..],
        ),
        (
            "DELETE",
            "/auth/v1/admin/api_keys/not-a-uuid",
            &service_only[..],
        ),
        ("GET", "/auth/v1/admin/mailbox?to=%00", &service_only[..]),
        (
            "GET",
            "/auth/v1/authorize?provider=%00&redirect_to=javascript:x",
            &anon_only[..],
        ),
        ("GET", "/auth/v1/callback?code=x&state=%ff", &anon_only[..]),
        (
            "GET",
            "/auth/v1/nonexistent/../../admin/users",
            &anon_only[..],
        ),
        ("PATCH", "/auth/v1/user", &user_only[..]),
    ] {
        cases.push(case(
            format!("auth {method} {target}"),
            request(method, target, headers, b""),
        ));
    }
    cases
}

fn jwt_cases(f: &Fixture) -> Vec<Case> {
    let claims = user_claims();
    let with = |key: &str, value: serde_json::Value| {
        let mut c = claims.clone();
        c[key] = value;
        jwt(&c)
    };
    let payload = claims.to_string();
    let mut tokens: Vec<(String, String)> = vec![
        (
            "alg none".into(),
            format!(
                "{}.{}.",
                b64url(br#"{"alg":"none","typ":"JWT"}"#),
                b64url(payload.as_bytes())
            ),
        ),
        (
            "alg None".into(),
            format!(
                "{}.{}.",
                b64url(br#"{"alg":"None"}"#),
                b64url(payload.as_bytes())
            ),
        ),
        (
            "alg none with signature".into(),
            jwt_raw(r#"{"alg":"none"}"#, &payload, JWT_SECRET.as_bytes()),
        ),
        (
            "alg HS512 header, HS256 signature".into(),
            jwt_raw(r#"{"alg":"HS512"}"#, &payload, JWT_SECRET.as_bytes()),
        ),
        (
            "alg RS256 header, HMAC signature".into(),
            jwt_raw(r#"{"alg":"RS256"}"#, &payload, JWT_SECRET.as_bytes()),
        ),
        (
            "alg ES256 header".into(),
            jwt_raw(
                r#"{"alg":"ES256","kid":"x"}"#,
                &payload,
                JWT_SECRET.as_bytes(),
            ),
        ),
        (
            "alg missing".into(),
            jwt_raw(r#"{"typ":"JWT"}"#, &payload, JWT_SECRET.as_bytes()),
        ),
        (
            "alg number".into(),
            jwt_raw(r#"{"alg":256}"#, &payload, JWT_SECRET.as_bytes()),
        ),
        (
            "header not JSON".into(),
            jwt_raw("{", &payload, JWT_SECRET.as_bytes()),
        ),
        (
            "header array".into(),
            jwt_raw("[]", &payload, JWT_SECRET.as_bytes()),
        ),
        (
            "kid traversal".into(),
            jwt_raw(
                r#"{"alg":"HS256","kid":"../../keys.json"}"#,
                &payload,
                JWT_SECRET.as_bytes(),
            ),
        ),
        (
            "kid NUL".into(),
            jwt_raw(
                "{\"alg\":\"HS256\",\"kid\":\"\\u0000\"}",
                &payload,
                JWT_SECRET.as_bytes(),
            ),
        ),
        (
            "jku and x5u".into(),
            jwt_raw(
                r#"{"alg":"HS256","jku":"http://127.0.0.1:1/jwks","x5u":"http://127.0.0.1:1/x"}"#,
                &payload,
                JWT_SECRET.as_bytes(),
            ),
        ),
        (
            "crit header".into(),
            jwt_raw(
                r#"{"alg":"HS256","crit":["exp"]}"#,
                &payload,
                JWT_SECRET.as_bytes(),
            ),
        ),
        (
            "embedded jwk".into(),
            jwt_raw(
                r#"{"alg":"HS256","jwk":{"kty":"oct","k":"AAAA"}}"#,
                &payload,
                JWT_SECRET.as_bytes(),
            ),
        ),
        (
            "wrong key".into(),
            jwt_raw(
                r#"{"alg":"HS256"}"#,
                &payload,
                b"another-secret-another-secret-0123456789",
            ),
        ),
        (
            "empty key".into(),
            jwt_raw(r#"{"alg":"HS256"}"#, &payload, b""),
        ),
        ("signature stripped".into(), {
            let t = jwt(&claims);
            t[..=t.rfind('.').unwrap()].to_owned()
        }),
        ("signature flipped".into(), {
            let mut t = jwt(&claims);
            let last = t.pop().unwrap();
            t.push(if last == 'A' { 'B' } else { 'A' });
            t
        }),
        ("expired".into(), with("exp", serde_json::json!(now() - 10))),
        (
            "exp string".into(),
            with("exp", serde_json::json!("tomorrow")),
        ),
        ("exp huge".into(), with("exp", serde_json::json!(1e300))),
        ("exp negative".into(), with("exp", serde_json::json!(-1))),
        (
            "exp u64 max".into(),
            with("exp", serde_json::json!(u64::MAX)),
        ),
        (
            "nbf future".into(),
            with("nbf", serde_json::json!(now() + 3600)),
        ),
        (
            "iat future".into(),
            with("iat", serde_json::json!(now() + 86_400 * 365)),
        ),
        ("aud number".into(), with("aud", serde_json::json!(123))),
        (
            "aud nested".into(),
            with("aud", serde_json::json!([[["authenticated"]]])),
        ),
        (
            "aud wrong".into(),
            with("aud", serde_json::json!("someone-else")),
        ),
        (
            "role postgres".into(),
            with("role", serde_json::json!("postgres")),
        ),
        (
            "role supabase_auth_admin".into(),
            with("role", serde_json::json!("supabase_auth_admin")),
        ),
        (
            "role authenticator".into(),
            with("role", serde_json::json!("authenticator")),
        ),
        ("role missing".into(), {
            let mut c = claims.clone();
            c.as_object_mut().unwrap().remove("role");
            jwt(&c)
        }),
        (
            "role unknown".into(),
            with("role", serde_json::json!("no_such_role")),
        ),
        ("role empty".into(), with("role", serde_json::json!(""))),
        ("role number".into(), with("role", serde_json::json!(7))),
        (
            "role injection".into(),
            with("role", serde_json::json!("anon\"; drop table items; --")),
        ),
        (
            "role NUL".into(),
            with("role", serde_json::json!("anon\u{0}")),
        ),
        (
            "role very long".into(),
            with("role", serde_json::json!("r".repeat(10_000))),
        ),
        (
            "sub not uuid".into(),
            with("sub", serde_json::json!("not-a-uuid")),
        ),
        ("sub number".into(), with("sub", serde_json::json!(42))),
        ("sub NUL".into(), with("sub", serde_json::json!("\u{0}"))),
        (
            "sub object".into(),
            with("sub", serde_json::json!({"a": 1})),
        ),
        (
            "session_id garbage".into(),
            with("session_id", serde_json::json!("x'; --")),
        ),
        (
            "aal weird".into(),
            with("aal", serde_json::json!({"level": 9})),
        ),
        (
            "email NUL".into(),
            with("email", serde_json::json!("a\u{0}@example.com")),
        ),
        (
            "deep claims".into(),
            jwt_raw(
                r#"{"alg":"HS256"}"#,
                &format!(
                    "{{\"role\":\"anon\",\"x\":{}}}",
                    nest("[", "1", "]", 10_000)
                ),
                JWT_SECRET.as_bytes(),
            ),
        ),
        (
            "many claims".into(),
            jwt_raw(
                r#"{"alg":"HS256"}"#,
                &format!(
                    "{{\"role\":\"anon\",{}\"z\":1}}",
                    (0..5000)
                        .map(|i| format!("\"c{i}\":{i},"))
                        .collect::<String>()
                ),
                JWT_SECRET.as_bytes(),
            ),
        ),
        (
            "payload not JSON".into(),
            jwt_raw(r#"{"alg":"HS256"}"#, "not json", JWT_SECRET.as_bytes()),
        ),
        (
            "payload array".into(),
            jwt_raw(r#"{"alg":"HS256"}"#, "[1,2]", JWT_SECRET.as_bytes()),
        ),
        ("payload invalid UTF-8".into(), {
            let input = format!(
                "{}.{}",
                b64url(br#"{"alg":"HS256"}"#),
                b64url(b"{\"role\":\"\xff\"}")
            );
            let mut mac =
                hmac::Hmac::<sha2::Sha256>::new_from_slice(JWT_SECRET.as_bytes()).unwrap();
            mac.update(input.as_bytes());
            format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
        }),
        ("one part".into(), "eyJhbGciOiJIUzI1NiJ9".into()),
        ("two parts".into(), "eyJhbGciOiJIUzI1NiJ9.e30".into()),
        ("four parts".into(), format!("{}.extra", jwt(&claims))),
        ("dots only".into(), "...".into()),
        ("garbage base64".into(), "!!!.@@@.###".into()),
        (
            "padded base64".into(),
            "eyJhbGciOiJIUzI1NiJ9==.e30=.AAAA==".into(),
        ),
        (
            "standard base64 alphabet".into(),
            jwt(&claims).replace('-', "+").replace('_', "/"),
        ),
        (
            "64 KB token".into(),
            format!("{}.{}.x", "A".repeat(32_000), "B".repeat(32_000)),
        ),
        (
            "whitespace inside".into(),
            jwt(&claims).replacen('.', ". ", 1),
        ),
    ];
    tokens.push((
        "sovra_sk prefix garbage".into(),
        "sovra_sk_not_a_real_key".into(),
    ));
    let targets = [
        ("GET", "/rest/v1/items"),
        ("POST", "/rest/v1/rpc/echo?t=x"),
        ("GET", "/auth/v1/user"),
        ("GET", "/storage/v1/bucket"),
        ("GET", "/sovra/v1/whoami/db"),
        ("POST", "/realtime/v1/api/broadcast"),
    ];
    let mut cases = Vec::new();
    for (name, token) in &tokens {
        let bearer = format!("Bearer {token}");
        for (method, target) in targets {
            let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
            cases.push(case(
                format!("jwt {name} as bearer {method} {target}"),
                request(
                    method,
                    target,
                    &[
                        ("apikey", f.anon.as_str()),
                        ("Authorization", &bearer),
                        ("Content-Type", "application/json"),
                    ],
                    body,
                ),
            ));
        }
        cases.push(case(
            format!("jwt {name} as apikey"),
            request("GET", "/rest/v1/items", &[("apikey", token)], b""),
        ));
        cases.push(case(
            format!("jwt {name} as apikey query"),
            request(
                "GET",
                &format!("/rest/v1/items?apikey={}", pct(token)),
                &[],
                b"",
            ),
        ));
    }
    for authorization in [
        "Bearer",
        "Bearer ",
        "Basic YTpi",
        "bearer  x y z",
        "Token abc",
        "\t",
    ] {
        cases.push(case(
            format!("authorization {authorization:?}"),
            request(
                "GET",
                "/rest/v1/items",
                &[
                    ("apikey", f.anon.as_str()),
                    ("Authorization", authorization),
                ],
                b"",
            ),
        ));
    }
    cases
}

/// A request to `/storage/v1/s3` signed with SigV4 as the fixture's user
/// (session token: project ref `default`, the anon key, the user's JWT),
/// for `Host: 127.0.0.1`, with `payload` as `x-amz-content-sha256`.
fn s3_signed(
    f: &Fixture,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, &str)],
    payload: &str,
    body: &[u8],
) -> Vec<u8> {
    use sovra_storage::s3::sigv4;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let date = sigv4::format_long_date(i64::try_from(now).unwrap());
    let pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut headers: Vec<(String, String)> = vec![
        ("host".to_owned(), "127.0.0.1".to_owned()),
        ("x-amz-content-sha256".to_owned(), payload.to_owned()),
        ("x-amz-date".to_owned(), date.clone()),
        ("x-amz-security-token".to_owned(), f.user.clone()),
    ];
    headers.extend(
        extra
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned())),
    );
    let names: Vec<String> = headers.iter().map(|(n, _)| n.clone()).collect();
    let authorization = sigv4::authorization_header(
        "default",
        &f.anon,
        "local",
        &date,
        method,
        path,
        &pairs,
        &names,
        |name| {
            headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect()
        },
        payload,
    );
    let mut target = path.to_owned();
    if !pairs.is_empty() {
        target.push('?');
        target.push_str(
            &pairs
                .iter()
                .map(|(k, v)| format!("{}={}", sigv4::uri_encode(k), sigv4::uri_encode(v)))
                .collect::<Vec<_>>()
                .join("&"),
        );
    }
    let mut sent: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(n, _)| n != "host")
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    sent.push(("Authorization", &authorization));
    request(method, &target, &sent, body)
}

/// The S3 protocol: forged and malformed signatures, and correctly signed
/// requests carrying hostile XML, `aws-chunked` bodies and names.
fn s3_cases(f: &Fixture) -> Vec<Case> {
    let mut cases = Vec::new();
    let sig = "0".repeat(64);
    for authorization in [
        "AWS4-HMAC-SHA256".to_owned(),
        "AWS4-HMAC-SHA256 ".to_owned(),
        "AWS4-HMAC-SHA256 Credential=".to_owned(),
        "AWS4-HMAC-SHA256 Credential=a/b/c/d/e, SignedHeaders=, Signature=".to_owned(),
        format!("AWS4-HMAC-SHA256 Credential=x/20990101/local/s3/aws4_request, SignedHeaders=host, Signature={sig}"),
        format!("AWS4-HMAC-SHA256 Credential={}/20250101/local/s3/aws4_request, SignedHeaders=host, Signature={sig}", "k".repeat(5000)),
        format!("AWS4-HMAC-SHA256 Credential=a/20250101/local/s3/aws4_request, SignedHeaders={}, Signature={sig}", "host;".repeat(2000)),
        "AWS4-HMAC-SHA256 Credential=\u{0}/20250101/local/s3/aws4_request, SignedHeaders=host, Signature=zz".to_owned(),
    ] {
        for date in ["20250101T000000Z", "99999999T999999Z", "", "\u{7f}"] {
            cases.push(case(
                format!("s3 authorization {} / {date}", authorization.chars().take(60).collect::<String>()),
                request(
                    "GET",
                    "/storage/v1/s3/hostile",
                    &[("Authorization", authorization.as_str()), ("x-amz-date", date)],
                    b"",
                ),
            ));
        }
    }
    for query in [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2F20250101%2Flocal%2Fs3%2Faws4_request&X-Amz-Date=20250101T000000Z&X-Amz-Expires=99999999999999999999&X-Amz-SignedHeaders=host&X-Amz-Signature=00",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=%FF&X-Amz-Date=x&X-Amz-Expires=-1&X-Amz-SignedHeaders=&X-Amz-Signature=",
        "X-Amz-Algorithm=nope&X-Amz-Credential=a",
        "%zz=1",
        "list-type=2&max-keys=-1",
    ] {
        cases.push(case(
            format!("s3 presigned {query}"),
            request(
                "GET",
                &format!("/storage/v1/s3/hostile/k?{query}"),
                &[],
                b"",
            ),
        ));
    }
    // Signed requests with hostile payloads.
    let hash = |body: &[u8]| sovra_storage::s3::sigv4::sha256_hex(body);
    let laughs = format!(
        "<!DOCTYPE l [<!ENTITY a \"{}\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\">]><Delete><Object><Key>&b;</Key></Object></Delete>",
        "x".repeat(100)
    );
    let deep = format!("{}{}", "<a>".repeat(100_000), "</a>".repeat(100_000));
    let wide = format!(
        "<Delete>{}</Delete>",
        "<Object><Key>k</Key></Object>".repeat(20_000)
    );
    let attrs = format!("<Delete {}></Delete>", "a=\"1\" ".repeat(50_000));
    let xml_bodies: Vec<Vec<u8>> = vec![
        laughs.into_bytes(),
        deep.into_bytes(),
        wide.into_bytes(),
        attrs.into_bytes(),
        b"<Delete><Object><Key>\xff\xfe</Key></Object></Delete>".to_vec(),
        b"<Delete><Object><Key>&#0;&#xD800;&#99999999999;</Key></Object></Delete>".to_vec(),
        b"<Delete><Object><Key><![CDATA[".to_vec(),
        vec![0xff; 1000],
    ];
    for (i, body) in xml_bodies.iter().enumerate() {
        cases.push(case(
            format!("s3 DeleteObjects hostile XML {i}"),
            s3_signed(
                f,
                "POST",
                "/storage/v1/s3/hostile",
                &[("delete", "")],
                &[],
                &hash(body),
                body,
            ),
        ));
        cases.push(case(
            format!("s3 CompleteMultipartUpload hostile XML {i}"),
            s3_signed(
                f,
                "POST",
                "/storage/v1/s3/hostile/k",
                &[("uploadId", "00000000-0000-0000-0000-000000000000")],
                &[],
                &hash(body),
                body,
            ),
        ));
    }
    for (i, body) in [
        &b"ffffffffffffffffffff;chunk-signature=00\r\n"[..],
        b"5\r\nhello",
        b"zz\r\n",
        b"0;chunk-signature=\r\n\r\n",
        b"3;chunk-signature=0000000000000000000000000000000000000000000000000000000000000000\r\nabc\r\n0;chunk-signature=00\r\n\r\n",
        b"\r\n\r\n\r\n",
    ]
    .iter()
    .enumerate()
    {
        for payload in [
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        ] {
            cases.push(case(
                format!("s3 PutObject aws-chunked {payload} {i}"),
                s3_signed(
                    f,
                    "PUT",
                    "/storage/v1/s3/hostile/chunked",
                    &[],
                    &[("content-encoding", "aws-chunked"), ("x-amz-decoded-content-length", "5")],
                    payload,
                    body,
                ),
            ));
        }
    }
    for (name, query, extra) in [
        ("bad content sha", vec![], vec![]),
        (
            "copy source traversal",
            vec![],
            vec![("x-amz-copy-source", "/../../etc/passwd")],
        ),
        (
            "copy source garbage",
            vec![],
            vec![("x-amz-copy-source", "%ff%fe")],
        ),
        (
            "part number huge",
            vec![("partNumber", "99999999999999999999"), ("uploadId", "x")],
            vec![],
        ),
        (
            "upload id garbage",
            vec![("partNumber", "1"), ("uploadId", "../../x")],
            vec![],
        ),
        (
            "meta header garbage",
            vec![],
            vec![("x-amz-meta-a", "\u{1}")],
        ),
    ] {
        let payload = if name == "bad content sha" {
            "not-a-hash"
        } else {
            "UNSIGNED-PAYLOAD"
        };
        cases.push(case(
            format!("s3 PutObject {name}"),
            s3_signed(
                f,
                "PUT",
                "/storage/v1/s3/hostile/obj",
                &query,
                &extra,
                payload,
                b"data",
            ),
        ));
    }
    for path in [
        "/storage/v1/s3/hostile/..%2F..%2Fetc%2Fpasswd",
        "/storage/v1/s3/hostile/a%00b",
        "/storage/v1/s3/..",
        "/storage/v1/s3/%ff",
        "/storage/v1/s3//",
    ] {
        cases.push(case(
            format!("s3 signed GET {path}"),
            s3_signed(f, "GET", path, &[], &[], "UNSIGNED-PAYLOAD", b""),
        ));
    }
    cases
}

fn storage_cases(f: &Fixture) -> Vec<Case> {
    let user_bearer = format!("Bearer {}", f.user);
    let user = [
        ("apikey", f.anon.as_str()),
        ("Authorization", user_bearer.as_str()),
    ];
    let anon = [("apikey", f.anon.as_str())];
    let mut cases = Vec::new();
    let names = [
        "../../../etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e/%2e%2e/etc/passwd",
        "a/../../b",
        "./a",
        "a/./b",
        "a//b",
        "/leading",
        "trailing/",
        "a%00b",
        "%00",
        "a\\..\\b",
        "%ff%fe",
        "%c0%ae%c0%ae/x",
        "%e2%80%ae-rtl",
        "con",
        "a%0d%0aSet-Cookie:%20x",
        "%25%32%65",
        "space%20name",
        "a?b",
        "a#b",
    ];
    let long_name = "n".repeat(10_000);
    let many_segments = vec!["s"; 2000].join("/");
    let mut all_names: Vec<&str> = names.to_vec();
    all_names.push(&long_name);
    all_names.push(&many_segments);
    for name in &all_names {
        let shown: String = name.chars().take(40).collect();
        for (method, prefix, headers, body) in [
            (
                "POST",
                "/storage/v1/object/hostile/",
                &user[..],
                &b"data"[..],
            ),
            (
                "PUT",
                "/storage/v1/object/hostile/",
                &user[..],
                &b"data"[..],
            ),
            ("GET", "/storage/v1/object/hostile/", &user[..], &b""[..]),
            (
                "GET",
                "/storage/v1/object/public/hostile/",
                &anon[..],
                &b""[..],
            ),
            (
                "GET",
                "/storage/v1/object/authenticated/hostile/",
                &user[..],
                &b""[..],
            ),
            (
                "GET",
                "/storage/v1/object/info/hostile/",
                &user[..],
                &b""[..],
            ),
            ("DELETE", "/storage/v1/object/hostile/", &user[..], &b""[..]),
            (
                "POST",
                "/storage/v1/object/sign/hostile/",
                &user[..],
                &br#"{"expiresIn":60}"#[..],
            ),
            (
                "POST",
                "/storage/v1/object/upload/sign/hostile/",
                &user[..],
                &b""[..],
            ),
            ("GET", "/storage/v1/object/", &user[..], &b""[..]),
            ("GET", "/storage/v1/bucket/", &user[..], &b""[..]),
        ] {
            cases.push(case(
                format!("storage {method} {prefix}{shown}"),
                request(method, &format!("{prefix}{name}"), headers, body),
            ));
        }
    }
    // Raw bytes in the object name (not percent-encoded).
    for raw in [
        &b"/storage/v1/object/hostile/a\xffb"[..],
        b"/storage/v1/object/hostile/a\x00b",
        b"/storage/v1/object/hostile/a b",
    ] {
        cases.push(closing(
            format!("storage raw target {}", String::from_utf8_lossy(raw)),
            request_bytes("GET", raw, &user, b""),
        ));
    }
    for range in [
        "bytes=",
        "bytes=5-1",
        "bytes=-0",
        "bytes=0-99999999999999999999999",
        "bytes=99999999999999999999-",
        "bytes=a-b",
        "bytes=0-1,2-3",
        "bytes=--1",
        "items=0-1",
        "bytes=0-0,-1",
        "bytes= 1 - 2",
    ] {
        for target in [
            "/storage/v1/object/hostile/tus/file.bin",
            "/storage/v1/object/public/hostile/a.txt",
        ] {
            let mut headers = user.to_vec();
            headers.push(("Range", range));
            cases.push(case(
                format!("storage Range {range} {target}"),
                request("GET", target, &headers, b""),
            ));
        }
    }
    for (name, value) in [
        ("If-None-Match", "\u{7f}\u{7f}"),
        ("If-None-Match", "*, W/\"x\", \"unterminated"),
        ("If-Modified-Since", "yesterday"),
        ("If-Modified-Since", "Thu, 01 Jan 99999 00:00:00 GMT"),
        ("Cache-Control", "max-age=-1"),
    ] {
        let mut headers = user.to_vec();
        headers.push((name, value));
        cases.push(case(
            format!("storage {name}: {value}"),
            request(
                "GET",
                "/storage/v1/object/public/hostile/a.txt",
                &headers,
                b"",
            ),
        ));
    }
    // Uploads with odd headers.
    for (name, value) in [
        ("Content-Type", "text/html\r\nX-Injected: 1"),
        ("Content-Type", "\u{7f}"),
        ("Content-Type", ""),
        ("Content-Type", "a/b; charset=\"unterminated"),
        ("x-upsert", "maybe"),
        ("cache-control", "\u{7f}"),
        ("x-metadata", "!!!not-base64!!!"),
        ("x-metadata", "eyJhIjoxfQ"),
        ("Content-Length", "-1"),
        ("Content-Length", "99999999999999999999"),
        ("Transfer-Encoding", "gzip"),
    ] {
        let mut headers = user.to_vec();
        headers.push((name, value));
        cases.push(closing(
            format!("storage upload {name}: {value:?}"),
            request_bytes("POST", b"/storage/v1/object/hostile/h.txt", &headers, b""),
        ));
    }
    // Malformed multipart.
    let multipart = |boundary_header: &str, body: &[u8]| {
        let mut headers = user.to_vec();
        headers.push(("Content-Type", boundary_header));
        request("POST", "/storage/v1/object/hostile/m.txt", &headers, body)
    };
    let bodies: Vec<(&str, &str, Vec<u8>)> = vec![
        ("no boundary", "multipart/form-data", b"--x\r\n\r\nhello\r\n--x--\r\n".to_vec()),
        ("empty boundary", "multipart/form-data; boundary=", b"--\r\n\r\nhello\r\n----\r\n".to_vec()),
        ("mismatched boundary", "multipart/form-data; boundary=abc", b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nhello\r\n--xyz--\r\n".to_vec()),
        ("unterminated", "multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nhello".to_vec()),
        ("no disposition", "multipart/form-data; boundary=abc", b"--abc\r\n\r\nhello\r\n--abc--\r\n".to_vec()),
        ("newline in contentType", "multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data; name=\"contentType\"\r\n\r\ntext/plain\r\nX-Injected: 1\r\n--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nhello\r\n--abc--\r\n".to_vec()),
        ("html contentType", "multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data; name=\"contentType\"\r\n\r\ntext/html\r\n--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n<script>alert(1)</script>\r\n--abc--\r\n".to_vec()),
        ("huge part header", "multipart/form-data; boundary=abc", format!("--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\r\nhello\r\n--abc--\r\n", "f".repeat(200_000)).into_bytes()),
        ("10000 parts", "multipart/form-data; boundary=abc", "--abc\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\ny\r\n".repeat(10_000).into_bytes()),
        ("garbage", "multipart/form-data; boundary=abc", b"\xff\xfe\x00\x01".to_vec()),
        ("cacheControl field NUL", "multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data; name=\"cacheControl\"\r\n\r\n\x00\r\n--abc\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nhello\r\n--abc--\r\n".to_vec()),
        ("metadata field garbage", "multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{{{\r\n--abc\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nhello\r\n--abc--\r\n".to_vec()),
    ];
    for (what, content_type, body) in bodies {
        cases.push(case(
            format!("storage multipart {what}"),
            multipart(content_type, &body),
        ));
    }
    // Signed URLs with broken tokens and expiries.
    for token in [
        "x",
        "",
        "%00",
        "a.b.c",
        &jwt(&serde_json::json!({"url": "hostile/../../etc/passwd", "exp": now() + 60})),
    ] {
        cases.push(case(
            format!("storage signed GET token {token:.30}"),
            request(
                "GET",
                &format!("/storage/v1/object/sign/hostile/a.txt?token={}", pct(token)),
                &[],
                b"",
            ),
        ));
        cases.push(case(
            format!("storage signed PUT token {token:.30}"),
            request(
                "PUT",
                &format!(
                    "/storage/v1/object/upload/sign/hostile/a.txt?token={}",
                    pct(token)
                ),
                &[],
                b"data",
            ),
        ));
    }
    for expires in [
        "-1",
        "0",
        "\"abc\"",
        "1e400",
        "99999999999999999999",
        "null",
        "[]",
    ] {
        let mut headers = user.to_vec();
        headers.push(("Content-Type", "application/json"));
        cases.push(case(
            format!("storage sign expiresIn {expires}"),
            request(
                "POST",
                "/storage/v1/object/sign/hostile/tus/file.bin",
                &headers,
                format!("{{\"expiresIn\":{expires}}}").as_bytes(),
            ),
        ));
    }
    // TUS headers.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let good_meta = format!(
        "bucketName {},objectName {}",
        b64("hostile"),
        b64("tus/x.bin")
    );
    let tus_create: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "no Tus-Resumable",
            vec![
                ("Upload-Length", "10".into()),
                ("Upload-Metadata", good_meta.clone()),
            ],
        ),
        (
            "Tus-Resumable 0.0.1",
            vec![
                ("Tus-Resumable", "0.0.1".into()),
                ("Upload-Length", "10".into()),
                ("Upload-Metadata", good_meta.clone()),
            ],
        ),
        (
            "Upload-Length -1",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "-1".into()),
                ("Upload-Metadata", good_meta.clone()),
            ],
        ),
        (
            "Upload-Length abc",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "abc".into()),
                ("Upload-Metadata", good_meta.clone()),
            ],
        ),
        (
            "Upload-Length huge",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "99999999999999999999999".into()),
                ("Upload-Metadata", good_meta.clone()),
            ],
        ),
        (
            "Upload-Length 1e30",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "1e30".into()),
                ("Upload-Metadata", good_meta.clone()),
            ],
        ),
        (
            "no length",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Metadata", good_meta.clone()),
            ],
        ),
        (
            "defer and length",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Defer-Length", "1".into()),
                ("Upload-Length", "10".into()),
                ("Upload-Metadata", good_meta.clone()),
            ],
        ),
        (
            "defer 2",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Defer-Length", "2".into()),
                ("Upload-Metadata", good_meta.clone()),
            ],
        ),
        (
            "no metadata",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
            ],
        ),
        (
            "metadata garbage",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
                ("Upload-Metadata", "!!! @@@,,, ###".into()),
            ],
        ),
        (
            "metadata bad base64",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
                ("Upload-Metadata", "bucketName ***,objectName ***".into()),
            ],
        ),
        (
            "metadata key only",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
                ("Upload-Metadata", "bucketName,objectName".into()),
            ],
        ),
        (
            "metadata traversal",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
                (
                    "Upload-Metadata",
                    format!(
                        "bucketName {},objectName {}",
                        b64("hostile"),
                        b64("../../etc/passwd")
                    ),
                ),
            ],
        ),
        (
            "metadata NUL name",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
                (
                    "Upload-Metadata",
                    format!("bucketName {},objectName {}", b64("hostile"), b64("a\0b")),
                ),
            ],
        ),
        (
            "metadata invalid UTF-8",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
                (
                    "Upload-Metadata",
                    format!(
                        "bucketName {},objectName {}",
                        b64("hostile"),
                        base64::engine::general_purpose::STANDARD.encode(b"\xff\xfe")
                    ),
                ),
            ],
        ),
        (
            "metadata unknown bucket",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
                (
                    "Upload-Metadata",
                    format!("bucketName {},objectName {}", b64("../nope"), b64("x")),
                ),
            ],
        ),
        (
            "metadata 5000 pairs",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
                (
                    "Upload-Metadata",
                    (0..5000)
                        .map(|i| format!("k{i} {}", b64("v")))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ],
        ),
        (
            "metadata contentType newline",
            vec![
                ("Tus-Resumable", "1.0.0".into()),
                ("Upload-Length", "10".into()),
                (
                    "Upload-Metadata",
                    format!(
                        "{good_meta},contentType {}",
                        b64("text/plain\r\nX-Injected: 1")
                    ),
                ),
            ],
        ),
    ];
    for (what, extra) in &tus_create {
        let mut headers: Vec<(&str, &str)> = user.to_vec();
        for (name, value) in extra {
            headers.push((name, value.as_str()));
        }
        cases.push(case(
            format!("tus create {what}"),
            request("POST", "/storage/v1/upload/resumable", &headers, b""),
        ));
    }
    let id = f.upload_id.as_str();
    let patch_headers: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "offset -1",
            vec![
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Offset", "-1"),
                ("Content-Type", "application/offset+octet-stream"),
            ],
        ),
        (
            "offset abc",
            vec![
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Offset", "abc"),
                ("Content-Type", "application/offset+octet-stream"),
            ],
        ),
        (
            "offset huge",
            vec![
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Offset", "99999999999999999999"),
                ("Content-Type", "application/offset+octet-stream"),
            ],
        ),
        (
            "offset past length",
            vec![
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Offset", "1000"),
                ("Content-Type", "application/offset+octet-stream"),
            ],
        ),
        (
            "no offset",
            vec![
                ("Tus-Resumable", "1.0.0"),
                ("Content-Type", "application/offset+octet-stream"),
            ],
        ),
        (
            "wrong content type",
            vec![
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Offset", "0"),
                ("Content-Type", "text/plain"),
            ],
        ),
        (
            "no Tus-Resumable",
            vec![
                ("Upload-Offset", "0"),
                ("Content-Type", "application/offset+octet-stream"),
            ],
        ),
        (
            "two offsets",
            vec![
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Offset", "0"),
                ("Upload-Offset", "5"),
                ("Content-Type", "application/offset+octet-stream"),
            ],
        ),
        (
            "Upload-Length change",
            vec![
                ("Tus-Resumable", "1.0.0"),
                ("Upload-Offset", "0"),
                ("Upload-Length", "1"),
                ("Content-Type", "application/offset+octet-stream"),
            ],
        ),
    ];
    for (what, extra) in &patch_headers {
        let mut headers: Vec<(&str, &str)> = user.to_vec();
        headers.extend_from_slice(extra);
        cases.push(case(
            format!("tus PATCH {what}"),
            request(
                "PATCH",
                &format!("/storage/v1/upload/resumable/{id}"),
                &headers,
                &[7u8; 200],
            ),
        ));
    }
    for target in [
        "/storage/v1/upload/resumable/not-an-id".to_owned(),
        "/storage/v1/upload/resumable/%00".to_owned(),
        "/storage/v1/upload/resumable/..%2F..%2Fx".to_owned(),
        "/storage/v1/upload/resumable/sign/garbage".to_owned(),
        format!("/storage/v1/upload/resumable/{}", "z".repeat(10_000)),
        format!("/storage/v1/upload/resumable/{id}x"),
    ] {
        let mut headers: Vec<(&str, &str)> = user.to_vec();
        headers.push(("Tus-Resumable", "1.0.0"));
        for method in ["HEAD", "PATCH", "DELETE", "GET", "OPTIONS"] {
            let mut h = headers.clone();
            h.push(("Upload-Offset", "0"));
            h.push(("Content-Type", "application/offset+octet-stream"));
            cases.push(case(
                format!("tus {method} {}", &target[..target.len().min(60)]),
                request(
                    method,
                    &target,
                    &h,
                    if method == "PATCH" { b"data" } else { b"" },
                ),
            ));
        }
    }
    // Someone else's upload: anon and another user.
    let other = jwt(
        &serde_json::json!({"sub": "0000000b-0000-4000-8000-00000000000b", "role": "authenticated", "exp": now() + 3600}),
    );
    let other_bearer = format!("Bearer {other}");
    for (who, headers) in [
        (
            "anon",
            vec![("apikey", f.anon.as_str()), ("Tus-Resumable", "1.0.0")],
        ),
        (
            "other user",
            vec![
                ("apikey", f.anon.as_str()),
                ("Authorization", other_bearer.as_str()),
                ("Tus-Resumable", "1.0.0"),
            ],
        ),
    ] {
        for method in ["HEAD", "PATCH", "DELETE"] {
            let mut h = headers.clone();
            h.push(("Upload-Offset", "0"));
            h.push(("Content-Type", "application/offset+octet-stream"));
            cases.push(case(
                format!("tus {method} as {who}"),
                request(
                    method,
                    &format!("/storage/v1/upload/resumable/{id}"),
                    &h,
                    if method == "PATCH" { b"data" } else { b"" },
                ),
            ));
        }
    }
    cases
}

fn protocol_cases(f: &Fixture) -> Vec<Case> {
    let anon = [("apikey", f.anon.as_str())];
    let mut cases = Vec::new();
    let huge_url = format!("/rest/v1/items?select={}", "a".repeat(1 << 20));
    cases.push(closing(
        "http 1 MB URL",
        request("GET", &huge_url, &anon, b""),
    ));
    cases.push(closing(
        "http 100 KB URL",
        request(
            "GET",
            &format!("/rest/v1/items?name=eq.{}", "a".repeat(100_000)),
            &anon,
            b"",
        ),
    ));
    let huge_header = "h".repeat(1 << 20);
    cases.push(closing(
        "http 1 MB header",
        request("GET", "/health", &[("X-Big", &huge_header)], b""),
    ));
    cases.push(closing(
        "http 1 MB apikey",
        request("GET", "/rest/v1/items", &[("apikey", &huge_header)], b""),
    ));
    let bearer = format!("Bearer {}", "t".repeat(60_000));
    cases.push(closing(
        "http 60 KB bearer",
        request(
            "GET",
            "/rest/v1/items",
            &[("apikey", f.anon.as_str()), ("Authorization", &bearer)],
            b"",
        ),
    ));
    let many: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("X-H{i}"), "v".to_owned()))
        .collect();
    let many_refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    cases.push(closing(
        "http 10000 headers",
        request("GET", "/health", &many_refs, b""),
    ));
    let many_same: Vec<(&str, &str)> = (0..90).map(|_| ("apikey", f.anon.as_str())).collect();
    cases.push(case(
        "http 90 apikey headers",
        request("GET", "/rest/v1/items", &many_same, b""),
    ));
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("not HTTP", b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec()),
        ("TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
        ("HTTP/9", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("HTTP/1.0 no host", b"GET /health HTTP/1.0\r\n\r\n".to_vec()),
        ("lowercase method", b"get /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("method garbage", b"F\x00O /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("TRACE", b"TRACE /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("OPTIONS *", b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("absolute form", b"GET http://evil.example/rest/v1/items HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("traversal path", b"GET /../../../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("encoded traversal", b"GET /rest/v1/%2e%2e/%2e%2e/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("raw NUL in path", b"GET /rest/v1/items\x00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("raw 0xff in path", b"GET /rest/v1/it\xffems HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("raw 0xff in query", b"GET /rest/v1/items?name=eq.\xff\xfe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()),
        ("NUL in header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nConnection: close\r\n\r\n".to_vec()),
        ("0xff in apikey", b"GET /rest/v1/items HTTP/1.1\r\nHost: x\r\napikey: \xff\xfe\r\nConnection: close\r\n\r\n".to_vec()),
        ("bare LF", b"GET /health HTTP/1.1\nHost: x\nConnection: close\n\n".to_vec()),
        ("bare CR", b"GET /health HTTP/1.1\rHost: x\rConnection: close\r\r".to_vec()),
        ("folded header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  continued\r\nConnection: close\r\n\r\n".to_vec()),
        ("space before colon", b"GET /health HTTP/1.1\r\nHost : x\r\nConnection: close\r\n\r\n".to_vec()),
        ("CL and TE", b"POST /rest/v1/items HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n".to_vec()),
        ("two content lengths", b"POST /rest/v1/items HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{}".to_vec()),
        ("negative content length", b"POST /rest/v1/items HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n".to_vec()),
        ("bad chunk size", b"POST /rest/v1/items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec()),
        ("huge chunk size", b"POST /rest/v1/items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nffffffffffffffffff\r\n{}\r\n".to_vec()),
        ("truncated chunked", b"POST /rest/v1/items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{}".to_vec()),
        ("TE gzip, chunked", b"POST /rest/v1/items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n".to_vec()),
        ("expect 100 over limit", b"POST /rest/v1/items HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 999999999999\r\nConnection: close\r\n\r\n".to_vec()),
        ("Expect garbage", b"POST /rest/v1/items HTTP/1.1\r\nHost: x\r\nExpect: 999-wat\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec()),
        ("pipelined garbage", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\x00\x01\r\n\r\n".to_vec()),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec()),
        ("h2c upgrade", b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".to_vec()),
        ("websocket upgrade on REST", b"GET /rest/v1/items HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec()),
        ("host garbage", b"GET /health HTTP/1.1\r\nHost: \xff\x00:99999\r\nConnection: close\r\n\r\n".to_vec()),
        ("two hosts", b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".to_vec()),
        ("empty request", b"\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in raw {
        cases.push(closing(format!("http {what}"), bytes));
    }
    for path in [
        "/",
        "//",
        "/rest",
        "/rest/v1",
        "/rest/v1/",
        "/rest/v2/items",
        "/metrics/../health",
        "/sovra/v1/whoami/db",
        "/storage/v1",
        "/storage/v1/",
        "/auth/v1",
        "/realtime/v1/api/broadcast/x/y",
    ] {
        for method in [
            "GET", "POST", "DELETE", "PATCH", "PUT", "OPTIONS", "HEAD", "PROPFIND",
        ] {
            cases.push(case(
                format!("http {method} {path}"),
                request(
                    method,
                    path,
                    &anon,
                    if matches!(method, "POST" | "PATCH" | "PUT") {
                        b"{}"
                    } else {
                        b""
                    },
                ),
            ));
        }
    }
    for origin in ["null", "http://evil.example", "\u{7f}", &"o".repeat(10_000)] {
        cases.push(case(
            format!("cors preflight origin {origin:.20}"),
            request(
                "OPTIONS",
                "/rest/v1/items",
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "DELETE\u{7f}"),
                    ("Access-Control-Request-Headers", "x,,,\u{7f}"),
                ],
                b"",
            ),
        ));
    }
    cases
}

fn websocket_cases(f: &Fixture) -> Vec<Case> {
    let mut cases = Vec::new();
    let ws = |name: &str, query: String, frames: Vec<Vec<u8>>| Case {
        name: format!("ws {name}"),
        run: Run::WebSocket {
            query,
            headers: Vec::new(),
            frames,
        },
        may_close: true,
    };
    let v1 = format!("apikey={}&vsn=1.0.0", f.anon);
    let v2 = format!("apikey={}&vsn=2.0.0", f.anon);
    // Handshakes.
    for (what, query) in [
        ("no apikey", "vsn=1.0.0".to_owned()),
        ("bad apikey", "apikey=garbage&vsn=1.0.0".to_owned()),
        ("vsn 9", format!("apikey={}&vsn=9.9.9", f.anon)),
        ("vsn NUL", format!("apikey={}&vsn=%00", f.anon)),
        ("apikey NUL", "apikey=%00&vsn=1.0.0".to_owned()),
        ("apikey invalid UTF-8", "apikey=%ff%fe&vsn=1.0.0".to_owned()),
        (
            "apikey alg none",
            format!(
                "apikey={}.{}.&vsn=1.0.0",
                b64url(br#"{"alg":"none"}"#),
                b64url(br#"{"role":"service_role"}"#)
            ),
        ),
        (
            "huge query",
            format!("apikey={}&vsn=1.0.0&x={}", f.anon, "q".repeat(100_000)),
        ),
    ] {
        cases.push(ws(what, query, vec![]));
    }
    let join = r#"{"topic":"realtime:room","event":"phx_join","payload":{"config":{"broadcast":{"self":true},"presence":{"key":"k"}}},"ref":"1","join_ref":"1"}"#;
    let deep = nest("[", "1", "]", 10_000);
    let text_frames: Vec<(&str, String)> = vec![
        ("empty text", String::new()),
        ("not JSON", "{".into()),
        ("JSON array v1", "[]".into()),
        ("JSON number", "123".into()),
        ("topic number", r#"{"topic":123,"event":"phx_join","payload":{},"ref":"1"}"#.into()),
        ("event null", r#"{"topic":"realtime:x","event":null,"payload":{},"ref":null}"#.into()),
        ("payload string", r#"{"topic":"realtime:x","event":"phx_join","payload":"s","ref":"1"}"#.into()),
        ("config wrong types", r#"{"topic":"realtime:x","event":"phx_join","payload":{"config":{"broadcast":"yes","presence":[],"postgres_changes":"all","private":"maybe"}},"ref":"1"}"#.into()),
        ("postgres_changes garbage", r#"{"topic":"realtime:x","event":"phx_join","payload":{"config":{"postgres_changes":[{"event":1,"schema":"x'; drop table items; --","table":null,"filter":"id=eq."},{"event":"*","schema":"public","table":"items","filter":"id=in.((((("},{"event":"INSERT","schema":"public","table":"items","filter":"name=eq.\u0000"},{"event":"*","schema":"pg_catalog","table":"pg_authid"}]}},"ref":"1"}"#.into()),
        ("10000 bindings", format!(r#"{{"topic":"realtime:x","event":"phx_join","payload":{{"config":{{"postgres_changes":[{}]}}}},"ref":"1"}}"#, vec![r#"{"event":"*","schema":"public","table":"items"}"#; 10_000].join(","))),
        ("access_token garbage", r#"{"topic":"realtime:x","event":"phx_join","payload":{"access_token":"a.b.c"},"ref":"1"}"#.into()),
        ("access_token number", r#"{"topic":"realtime:x","event":"access_token","payload":{"access_token":5},"ref":"1"}"#.into()),
        ("broadcast before join", r#"{"topic":"realtime:never","event":"broadcast","payload":{"type":"broadcast","event":"e","payload":{}},"ref":"1"}"#.into()),
        ("presence before join", r#"{"topic":"realtime:never","event":"presence","payload":{"type":"presence","event":"track","payload":{}},"ref":"1"}"#.into()),
        ("heartbeat weird ref", format!(r#"{{"topic":"phoenix","event":"heartbeat","payload":{{}},"ref":"{}"}}"#, "r".repeat(100_000))),
        ("deep payload", format!(r#"{{"topic":"realtime:x","event":"broadcast","payload":{deep},"ref":"1"}}"#)),
        ("topic huge", format!(r#"{{"topic":"realtime:{}","event":"phx_join","payload":{{}},"ref":"1"}}"#, "t".repeat(100_000))),
        ("topic NUL", "{\"topic\":\"realtime:\\u0000\",\"event\":\"phx_join\",\"payload\":{},\"ref\":\"1\"}".into()),
        ("phx_leave unknown", r#"{"topic":"realtime:nope","event":"phx_leave","payload":{},"ref":"1"}"#.into()),
    ];
    for (what, text) in &text_frames {
        cases.push(ws(
            &format!("v1 {what}"),
            v1.clone(),
            vec![ws_text(join), ws_text(text)],
        ));
    }
    let big_presence = format!(
        r#"{{"topic":"realtime:room","event":"presence","payload":{{"type":"presence","event":"track","payload":{{"x":"{}"}}}},"ref":"2"}}"#,
        "p".repeat(2_000_000)
    );
    cases.push(ws(
        "v1 2 MB presence",
        v1.clone(),
        vec![ws_text(join), ws_text(&big_presence)],
    ));
    let v2_frames = [
        "[null,null,null,null,null]",
        "[\"1\",\"1\",\"realtime:x\",\"phx_join\",{\"config\":{\"broadcast\":{\"self\":\"maybe\"}}}]",
        "[\"1\"]",
        "[1,2,3,4,5,6,7]",
        "[\"1\",\"1\",\"realtime:x\",\"broadcast\",{\"type\":\"broadcast\",\"event\":[],\"payload\":null}]",
        "{\"topic\":\"realtime:x\"}",
    ];
    for text in v2_frames {
        cases.push(ws(
            &format!("v2 {text:.40}"),
            v2.clone(),
            vec![ws_text(text)],
        ));
    }
    let binary: Vec<(&str, Vec<u8>)> = vec![
        ("binary empty", vec![]),
        ("binary kind 3 truncated", vec![3, 200, 200]),
        ("binary kind 4 truncated", vec![4, 255, 255, 255, 1]),
        (
            "binary kind 3 lengths past end",
            vec![3, 50, 50, 50, 50, b'a'],
        ),
        ("binary unknown kind", vec![9, 0, 0, 0]),
        ("binary garbage", (0..=255u8).collect()),
    ];
    for (what, payload) in binary {
        cases.push(ws(
            what,
            v2.clone(),
            vec![ws_text(join), ws_frame(0x82, true, &payload, None)],
        ));
        cases.push(ws(
            &format!("{what} v1"),
            v1.clone(),
            vec![ws_frame(0x82, true, &payload, None)],
        ));
    }
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked text", ws_frame(0x81, false, b"{}", None)),
        ("reserved opcode 3", ws_frame(0x83, true, b"x", None)),
        ("reserved opcode 11", ws_frame(0x8b, true, b"x", None)),
        ("RSV1 without extension", ws_frame(0xc1, true, b"{}", None)),
        ("RSV3", ws_frame(0x91, true, b"{}", None)),
        (
            "invalid UTF-8 text",
            ws_frame(0x81, true, b"\xff\xfe\xfd", None),
        ),
        (
            "continuation without start",
            ws_frame(0x80, true, b"x", None),
        ),
        ("fragmented control", ws_frame(0x09, true, b"x", None)),
        (
            "ping over 125 bytes",
            ws_frame(0x89, true, &[0u8; 200], None),
        ),
        (
            "close code 999",
            ws_frame(0x88, true, &999u16.to_be_bytes(), None),
        ),
        (
            "close code 1005",
            ws_frame(0x88, true, &1005u16.to_be_bytes(), None),
        ),
        ("close 1-byte payload", ws_frame(0x88, true, &[3], None)),
        (
            "close invalid UTF-8 reason",
            ws_frame(0x88, true, &[3, 232, 0xff, 0xfe], None),
        ),
        (
            "length 2^63-1",
            ws_frame(0x81, true, b"", Some(i64::MAX as u64)),
        ),
        ("length 2^64-1", ws_frame(0x81, true, b"", Some(u64::MAX))),
        (
            "length 10 MB announced",
            ws_frame(0x82, true, b"", Some(10_000_000)),
        ),
        (
            "4 MB text",
            ws_frame(0x81, true, "x".repeat(4_000_000).as_bytes(), None),
        ),
        (
            "text start never finished",
            ws_frame(0x01, true, b"{\"topic\":", None),
        ),
        (
            "interleaved text starts",
            [
                ws_frame(0x01, true, b"{", None),
                ws_frame(0x01, true, b"{", None),
            ]
            .concat(),
        ),
        ("10000 fragments", {
            let mut out = ws_frame(0x01, true, b"[", None);
            for _ in 0..10_000 {
                out.extend(ws_frame(0x00, true, b"1,", None));
            }
            out.extend(ws_frame(0x80, true, b"1]", None));
            out
        }),
        (
            "raw garbage bytes",
            b"\x00\x01\x02\x03\xff\xff\xff\xff".to_vec(),
        ),
        (
            "HTTP after upgrade",
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
    ];
    for (what, frame) in frames {
        cases.push(ws(what, v1.clone(), vec![frame]));
    }
    // A second handshake header set: bad upgrade requests.
    for (what, headers) in [
        (
            "version 12",
            vec![("Sec-WebSocket-Version".to_owned(), "12".to_owned())],
        ),
        (
            "protocol garbage",
            vec![("Sec-WebSocket-Protocol".to_owned(), "\u{7f},,,".to_owned())],
        ),
        (
            "extensions garbage",
            vec![(
                "Sec-WebSocket-Extensions".to_owned(),
                "permessage-deflate; client_max_window_bits=99".to_owned(),
            )],
        ),
    ] {
        cases.push(Case {
            name: format!("ws handshake {what}"),
            run: Run::WebSocket {
                query: v1.clone(),
                headers,
                frames: vec![ws_text(join)],
            },
            may_close: true,
        });
    }
    let no_key = b"GET /realtime/v1/websocket?vsn=1.0.0 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
    cases.push(closing("ws handshake without key", no_key));
    cases.push(case(
        "ws plain GET",
        request("GET", &format!("/realtime/v1/websocket?{v1}"), &[], b""),
    ));
    cases
}

/// Runs one case and says what went wrong, if anything. With
/// `SOVRA_HOSTILE_VERBOSE` set, prints every case's answer.
fn run_case(sovra: &mut Sovra, case: &Case) -> Option<String> {
    let outcome = match &case.run {
        Run::Http(bytes) => send(sovra.port, bytes, CASE_TIMEOUT, case.may_close),
        Run::WebSocket {
            query,
            headers,
            frames,
        } => {
            let extra: Vec<(&str, &str)> = headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            websocket(sovra.port, query, &extra, frames)
        }
    };
    if std::env::var_os("SOVRA_HOSTILE_VERBOSE").is_some() {
        let shown = match &outcome {
            Outcome::Status(code, head) => format!(
                "{code} {}",
                head.lines()
                    .next_back()
                    .unwrap_or("")
                    .chars()
                    .take(100)
                    .collect::<String>()
            ),
            other => format!("{other:?}"),
        };
        println!("CASE {:.100} -> {shown}", case.name);
    }
    let mut problem = match &outcome {
        Outcome::Status(code, head) if *code >= 500 => {
            let allowed = ALLOWED_5XX
                .iter()
                .any(|(prefix, status, _)| case.name.starts_with(prefix) && status == code);
            (!allowed).then(|| format!("answered {code}: {}", head.lines().next().unwrap_or("")))
        }
        Outcome::Status(..) => None,
        Outcome::Closed if case.may_close => None,
        Outcome::Closed => Some("closed the connection without an answer".to_owned()),
        Outcome::Timeout => Some(format!("no answer within {} s", CASE_TIMEOUT.as_secs())),
    };
    if let Err(health) = sovra.healthy() {
        problem = Some(format!("{health} (answer: {outcome:?}); restarted",));
        sovra.restart();
    }
    problem
}

fn panics_in(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("panicked at") || line.contains("stack overflow"))
        .map(|line| line.chars().take(300).collect())
        .collect()
}

fn scratch() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    // Reachable by the `postgres` system user when the tests run as root.
    let root = std::env::temp_dir().join("sovra-hostile-test");
    std::fs::create_dir_all(&root).unwrap();
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777));
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&root)
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn hostile_inputs_get_answers_below_500_and_never_crash_the_server() {
    let scratch = scratch();
    let mut sovra = Sovra::launch(scratch.path());
    let fixture = setup(&sovra);
    let mut cases = Vec::new();
    cases.extend(protocol_cases(&fixture));
    cases.extend(rest_cases(&fixture));
    cases.extend(json_body_cases(&fixture));
    cases.extend(jwt_cases(&fixture));
    cases.extend(storage_cases(&fixture));
    cases.extend(s3_cases(&fixture));
    cases.extend(websocket_cases(&fixture));
    // An optional filter, to re-run some cases while fixing them.
    if let Ok(filter) = std::env::var("SOVRA_HOSTILE_FILTER") {
        cases.retain(|case| case.name.contains(&filter));
    }
    let started = Instant::now();
    let mut failures = Vec::new();
    for case in &cases {
        if let Some(problem) = run_case(&mut sovra, case) {
            failures.push(format!(
                "{}: {problem}",
                case.name.chars().take(120).collect::<String>()
            ));
        }
    }
    let elapsed = started.elapsed();
    let panics = panics_in(&sovra.log);
    let alive = sovra.healthy();
    println!(
        "hostile suite: {} cases in {:.1} s, {} failures, {} panics in the log, {} server start(s)",
        cases.len(),
        elapsed.as_secs_f64(),
        failures.len(),
        panics.len(),
        sovra.starts
    );
    for failure in &failures {
        println!("FAIL {failure}");
    }
    for panic in &panics {
        println!("PANIC {panic}");
    }
    if !failures.is_empty() {
        // What the server said about them (its error lines carry no secrets).
        let log = std::fs::read_to_string(&sovra.log).unwrap_or_default();
        for line in log.lines().filter(|line| line.contains("ERROR")).take(50) {
            println!("LOG {}", line.chars().take(400).collect::<String>());
        }
    }
    assert!(
        cases.len() >= 300,
        "the suite shrank: {} cases",
        cases.len()
    );
    assert!(
        alive.is_ok(),
        "the server is not alive at the end: {alive:?}"
    );
    assert!(
        failures.is_empty() && panics.is_empty(),
        "{} of {} hostile cases failed and {} panics were logged (listed above)",
        failures.len(),
        cases.len(),
        panics.len()
    );
}
