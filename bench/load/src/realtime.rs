//! Realtime load: idle connections held, broadcast fan-out, and database
//! changes delivered under RLS. Connections come from several loopback
//! source addresses (127.0.0.2, .3, …) so that more than one address's
//! worth of ephemeral ports can be used.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Opens connection number `n` from source address 127.0.0.(2 + n % 8).
pub(crate) async fn connect(url: &str, key: &str, n: usize) -> anyhow::Result<Socket> {
    let parsed = url.trim_start_matches("http://");
    let addr: SocketAddr = parsed.trim_end_matches('/').parse()?;
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 8) as u8));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    let ws_url = format!("ws://{parsed}/realtime/v1/websocket?apikey={key}&vsn=2.0.0");
    let (ws, _) = tokio_tungstenite::client_async(ws_url, stream).await?;
    Ok(ws)
}

async fn join(
    ws: &mut Socket,
    topic: &str,
    config: Value,
    token: Option<&str>,
) -> anyhow::Result<Value> {
    let mut payload = json!({"config": config});
    if let Some(token) = token {
        payload["access_token"] = json!(token);
    }
    ws.send(Ws::Text(
        json!(["1", "1", topic, "phx_join", payload])
            .to_string()
            .into(),
    ))
    .await?;
    loop {
        let Some(frame) = ws.next().await else {
            anyhow::bail!("closed while joining")
        };
        if let Ws::Text(text) = frame? {
            let v: Value = serde_json::from_str(text.as_str())?;
            if v[3] == "phx_reply" && v[1] == "1" {
                anyhow::ensure!(v[4]["status"] == "ok", "join refused: {v}");
                return Ok(v[4].clone());
            }
        }
    }
}

/// Holds `n` connections, each joined to a channel of its own, and
/// heartbeats them; prints how many are up.
pub(crate) async fn idle(url: &str, key: &str, n: usize, secs: u64) -> anyhow::Result<String> {
    let started = Instant::now();
    let up = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(n);
    let gate = Arc::new(tokio::sync::Semaphore::new(256));
    let hold_until = Arc::new(tokio::sync::Notify::new());
    for i in 0..n {
        let url = url.to_owned();
        let key = key.to_owned();
        let up = up.clone();
        let failed = failed.clone();
        let gate = gate.clone();
        let hold = hold_until.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let ws = async {
                let mut ws = connect(&url, &key, i).await?;
                join(&mut ws, &format!("realtime:idle-{}", i % 1000), json!({}), None).await?;
                anyhow::Ok(ws)
            }
            .await;
            drop(permit);
            let Ok(mut ws) = ws else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            up.fetch_add(1, Ordering::Relaxed);
            // Heartbeat every 20 s until told to stop.
            loop {
                tokio::select! {
                    () = hold.notified() => break,
                    () = tokio::time::sleep(Duration::from_secs(20)) => {
                        if ws.send(Ws::Text(r#"[null,"h","phoenix","heartbeat",{}]"#.into())).await.is_err() {
                            break;
                        }
                    }
                    frame = ws.next() => if frame.is_none() { break },
                }
            }
        }));
    }
    // Wait until every connection is up or failed (at most two minutes:
    // connections stuck in a full accept queue count as not held).
    let ramp_deadline = Instant::now() + Duration::from_secs(120);
    while (up.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)) < n as u64
        && Instant::now() < ramp_deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ramp = started.elapsed();
    eprintln!(
        "connections up: {} (failed {}) after {:.1} s; holding {secs} s",
        up.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        ramp.as_secs_f64()
    );
    // The script samples the server's memory now.
    println!("READY");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let held = up.load(Ordering::Relaxed);
    hold_until.notify_waiters();
    for task in tasks {
        task.abort();
    }
    Ok(format!(
        "{held} connections held (failed {}), opened in {:.1} s",
        failed.load(Ordering::Relaxed),
        ramp.as_secs_f64()
    ))
}

fn report(mut latencies: Vec<u64>, delivered: u64, elapsed: Duration, unit: &str) -> String {
    latencies.sort_unstable();
    let pct = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64
                / 1000.0
        }
    };
    format!(
        "{:.0} {unit}/s delivered, p50 {:.2}ms, p99 {:.2}ms",
        delivered as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    )
}

/// `receivers` sockets on one topic; one sender broadcasts `rate`
/// messages per second for `secs`; every receiver measures send→receipt.
pub(crate) async fn broadcast(
    url: &str,
    key: &str,
    receivers: usize,
    rate: u64,
    secs: u64,
) -> anyhow::Result<String> {
    let topic = format!("realtime:fanout-{}", std::process::id());
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let stop = Arc::new(tokio::sync::Notify::new());
    for i in 0..receivers {
        let mut ws = connect(url, key, i).await?;
        join(&mut ws, &topic, json!({}), None).await?;
        let delivered = delivered.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                tokio::select! {
                    () = stop.notified() => break,
                    frame = ws.next() => {
                        let Some(Ok(Ws::Text(text))) = frame else { break };
                        // Only the timestamp is needed: find it without a full parse.
                        if let Some(at) = text.as_str().find("\"t\":") {
                            let rest = &text.as_str()[at + 4..];
                            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
                            if let Ok(sent) = rest[..end].parse::<u64>() {
                                latencies.push(now_micros().saturating_sub(sent));
                                delivered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
            latencies
        }));
    }
    let mut sender = connect(url, key, receivers).await?;
    join(
        &mut sender,
        &topic,
        json!({"broadcast": {"self": false}}),
        None,
    )
    .await?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut next = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let payload = json!({"type": "broadcast", "event": "tick", "payload": {"t": now_micros()}});
        sender
            .send(Ws::Text(
                json!([null, null, topic, "broadcast", payload])
                    .to_string()
                    .into(),
            ))
            .await?;
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let elapsed = started.elapsed();
    stop.notify_waiters();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    Ok(report(
        latencies,
        delivered.load(Ordering::Relaxed),
        elapsed,
        "messages",
    ))
}

/// Makes `n` confirmed users and signs them in: their ids and access tokens.
async fn users(
    url: &str,
    anon: &str,
    service: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let http = reqwest::Client::new();
    let stamp = std::process::id();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let email = format!("rt{stamp}-{i}@example.com");
        let made = http
            .post(format!("{url}/auth/v1/admin/users"))
            .header("apikey", service)
            .bearer_auth(service)
            .json(&json!({"email": email, "password": "bench-password", "email_confirm": true}))
            .send()
            .await?;
        anyhow::ensure!(
            made.status().is_success(),
            "creating a user: {}",
            made.status()
        );
        let session: Value = http
            .post(format!("{url}/auth/v1/token?grant_type=password"))
            .header("apikey", anon)
            .json(&json!({"email": email, "password": "bench-password"}))
            .send()
            .await?
            .json()
            .await?;
        let id = session["user"]["id"].as_str().unwrap_or("").to_owned();
        let token = session["access_token"].as_str().unwrap_or("").to_owned();
        anyhow::ensure!(!token.is_empty(), "signing in: {session}");
        out.push((id, token));
    }
    Ok(out)
}

/// `users` subscribers (each a user of its own) to INSERTs on `table`
/// (RLS on: each sees only its own rows); writes the user ids to
/// `ids_file` and prints READY, then the script writes rows; every receipt
/// is timed against the change's commit timestamp.
pub(crate) async fn changes(
    url: &str,
    key: &str,
    service: &str,
    table: &str,
    users_n: usize,
    ids_file: &str,
    secs: u64,
) -> anyhow::Result<String> {
    let made = users(url, key, service, users_n).await?;
    let tokens: Vec<String> = made.iter().map(|(_, t)| t.clone()).collect();
    std::fs::write(
        ids_file,
        made.iter()
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let mut ws = connect(url, key, i).await?;
        let config =
            json!({"postgres_changes": [{"event": "INSERT", "schema": "public", "table": table}]});
        join(
            &mut ws,
            &format!("realtime:changes-{i}"),
            config,
            Some(token),
        )
        .await?;
        let delivered = delivered.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                tokio::select! {
                    () = stop.notified() => break,
                    frame = ws.next() => {
                        let Some(Ok(Ws::Text(text))) = frame else { break };
                        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                        if v[3] != "postgres_changes" {
                            continue;
                        }
                        if let Some(ts) = v[4]["data"]["commit_timestamp"].as_str()
                            && let Some(ms) = parse_iso_ms(ts)
                        {
                            latencies.push(now_micros().saturating_sub(ms * 1000));
                        }
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    println!("READY");
    let started = Instant::now();
    let mut first: Option<(Instant, u64)> = None;
    let mut last = (Instant::now(), 0u64);
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = delivered.load(Ordering::Relaxed);
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n != last.1 {
            last = (Instant::now(), n);
        }
    }
    stop.notify_waiters();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    // Rate over the span in which deliveries happened.
    let (t0, n0) = first.unwrap_or((started, 0));
    let span = last
        .0
        .saturating_duration_since(t0)
        .max(Duration::from_millis(1));
    Ok(format!(
        "{} changes delivered; {}",
        last.1,
        report(latencies, last.1.saturating_sub(n0), span, "changes")
    ))
}

/// `2026-01-05T10:11:12.345Z` → milliseconds since the epoch.
fn parse_iso_ms(ts: &str) -> Option<u64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, mi, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let ms: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + h * 3600 + mi * 60 + s) * 1000) + ms).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_timestamps() {
        assert_eq!(super::parse_iso_ms("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(
            super::parse_iso_ms("2026-01-05T10:11:12.345Z"),
            Some(1_767_607_872_345)
        );
    }
}
