//! Dashboard sessions, without IO: the store of signed-in sessions (found by
//! the SHA-256 of the cookie's token, so the store holds no usable
//! secret), their CSRF tokens and expiry, and the sign-in rate limit.
//! Time is passed in (seconds), so expiry is tested without waiting.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The name of the session cookie.
pub const COOKIE: &str = "sovra_dashboard";

/// The header that carries the session's CSRF token on every request that
/// changes something.
pub const CSRF_HEADER: &str = "x-sovra-csrf";

/// Statements kept in a session's SQL history.
pub const HISTORY: usize = 50;

/// Who a session acts as.
#[derive(Clone)]
pub enum Principal {
    /// Signed in with the platform key: every tenant, and the tenant API.
    Platform { key: String },
    /// Signed in with one tenant's service key: that tenant only.
    Tenant { tenant: String, key: String },
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Platform { .. } => f.write_str("Platform"),
            Principal::Tenant { tenant, .. } => write!(f, "Tenant({tenant})"),
        }
    }
}

impl Principal {
    /// Whether this session may act on tenant `name`.
    pub fn may_use(&self, name: &str) -> bool {
        match self {
            Principal::Platform { .. } => true,
            Principal::Tenant { tenant, .. } => tenant == name,
        }
    }
}

/// One signed-in session.
#[derive(Clone, Debug)]
pub struct Session {
    pub principal: Principal,
    /// The CSRF token the front end sends in [`CSRF_HEADER`].
    pub csrf: String,
    /// Seconds since the epoch after which the session is gone.
    pub expires_at: u64,
    /// The SQL editor's recent statements, newest last.
    pub history: VecDeque<String>,
    /// Set to `true` when the session ends before its expiry (sign-out,
    /// its tenant deleted): what the live view's socket waits for.
    ended: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }

    /// What ends something opened for this session (the live view's
    /// socket): its expiry, or its end before that.
    pub fn end(&self) -> SessionEnd {
        SessionEnd {
            ended: self.ended.subscribe(),
            expires_at: self.expires_at,
        }
    }

    /// Marks the session ended (it has been removed from the store).
    fn finish(&self) {
        self.ended.send_replace(true);
    }
}

/// The end of a session, for what lives as long as it does: cloned into a
/// request's extensions, awaited by whoever serves it.
#[derive(Clone, Debug)]
pub struct SessionEnd {
    ended: tokio::sync::watch::Receiver<bool>,
    expires_at: u64,
}

/// Why a [`SessionEnd`] came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Signed out, or ended with its tenant.
    SignedOut,
    /// Its lifetime passed.
    Expired,
}

impl Ended {
    /// The reason given to the client (a WebSocket close frame's).
    pub fn reason(self) -> &'static str {
        match self {
            Ended::SignedOut => "The dashboard session has ended (signed out)",
            Ended::Expired => "The dashboard session has expired",
        }
    }
}

impl SessionEnd {
    /// Whether the session had ended (before its expiry) by now.
    pub fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Waits until the session ends: signed out (or its store dropped) or
    /// expired, on the clock `now` reads (seconds since the epoch).
    pub async fn wait(mut self, now: fn() -> u64) -> Ended {
        let left = std::time::Duration::from_secs(self.expires_at.saturating_sub(now()));
        tokio::select! {
            _ = self.ended.wait_for(|ended| *ended) => Ended::SignedOut,
            () = tokio::time::sleep(left) => Ended::Expired,
        }
    }
}

/// 244 random bits from the OS's source, as text.
pub fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The signed-in sessions of this process.
#[derive(Debug)]
pub struct Sessions {
    ttl: u64,
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Sessions that last `ttl` seconds from sign-in.
    pub fn new(ttl: u64) -> Sessions {
        Sessions {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts, in seconds.
    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// Starts a session for `principal` at `now`: its cookie token (the
    /// only copy; the store keeps its digest) and the session.
    pub fn create(&self, principal: Principal, now: u64) -> (String, Session) {
        let token = random_token();
        let session = Session {
            principal,
            csrf: random_token(),
            expires_at: now.saturating_add(self.ttl),
            history: VecDeque::new(),
            ended: std::sync::Arc::new(tokio::sync::watch::channel(false).0),
        };
        if let Ok(mut map) = self.map.lock() {
            // Expired sessions go whenever a new one comes.
            map.retain(|_, s| {
                let live = s.expires_at > now;
                if !live {
                    s.finish();
                }
                live
            });
            map.insert(digest(&token), session.clone());
        }
        (token, session)
    }

    /// The live session of cookie token `token` at `now`; an expired one
    /// is removed and not returned.
    pub fn get(&self, token: &str, now: u64) -> Option<Session> {
        let key = digest(token);
        let mut map = self.map.lock().ok()?;
        match map.get(&key) {
            Some(session) if session.expires_at > now => Some(session.clone()),
            Some(_) => {
                if let Some(session) = map.remove(&key) {
                    session.finish();
                }
                None
            }
            None => None,
        }
    }

    /// Ends the session of `token` (sign-out); whether there was one.
    pub fn revoke(&self, token: &str) -> bool {
        let removed = self
            .map
            .lock()
            .ok()
            .and_then(|mut map| map.remove(&digest(token)));
        removed.inspect(Session::finish).is_some()
    }

    /// Ends every session of tenant `name` (for example when it is deleted).
    pub fn revoke_tenant(&self, name: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, s| {
                let of_tenant =
                    matches!(&s.principal, Principal::Tenant { tenant, .. } if tenant == name);
                if of_tenant {
                    s.finish();
                }
                !of_tenant
            });
        }
    }

    /// Appends `sql` to the history of `token`'s session.
    pub fn remember(&self, token: &str, sql: &str) {
        if let Ok(mut map) = self.map.lock()
            && let Some(session) = map.get_mut(&digest(token))
        {
            session.history.retain(|old| old != sql);
            session.history.push_back(sql.to_owned());
            while session.history.len() > HISTORY {
                session.history.pop_front();
            }
        }
    }

    /// Sessions held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |map| map.len())
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failed sign-ins allowed per client address and window.
pub const SIGN_IN_FAILURES: u32 = 10;
/// The window of [`SIGN_IN_FAILURES`], in seconds.
pub const SIGN_IN_WINDOW: u64 = 60;

/// Counts failed sign-ins per client address (IPv6 by /64) in fixed
/// windows: past [`SIGN_IN_FAILURES`] in one window, sign-ins from that
/// address are refused until the window ends.
#[derive(Debug, Default)]
pub struct SignInLimiter {
    failures: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(seg.into())
        }
        v4 => v4,
    }
}

impl SignInLimiter {
    /// Whether `ip` may try to sign in at `now`.
    pub fn allowed(&self, ip: IpAddr, now: u64) -> bool {
        let window = now / SIGN_IN_WINDOW;
        self.failures.lock().is_ok_and(|map| {
            map.get(&client_key(ip))
                .is_none_or(|(w, count)| *w != window || *count < SIGN_IN_FAILURES)
        })
    }

    /// Counts a failed sign-in from `ip` at `now`.
    pub fn failed(&self, ip: IpAddr, now: u64) {
        let window = now / SIGN_IN_WINDOW;
        if let Ok(mut map) = self.failures.lock() {
            map.retain(|_, (w, _)| *w == window);
            let entry = map.entry(client_key(ip)).or_insert((window, 0));
            entry.1 = entry.1.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform() -> Principal {
        Principal::Platform {
            key: "sovra_pk_x".to_owned(),
        }
    }

    #[test]
    fn a_session_lives_until_its_expiry_and_no_longer() {
        let sessions = Sessions::new(100);
        let (token, session) = sessions.create(platform(), 1_000);
        assert_eq!(session.expires_at, 1_100);
        assert!(sessions.get(&token, 1_000).is_some());
        assert!(sessions.get(&token, 1_099).is_some());
        assert!(sessions.get(&token, 1_100).is_none());
        // Once seen expired it is gone for good.
        assert!(sessions.get(&token, 1_000).is_none());
        assert!(sessions.is_empty());
    }

    #[test]
    fn sign_out_revokes_and_unknown_tokens_find_nothing() {
        let sessions = Sessions::new(100);
        let (token, _) = sessions.create(platform(), 0);
        let (other, _) = sessions.create(platform(), 0);
        assert_ne!(token, other);
        assert!(sessions.get("not-a-token", 0).is_none());
        assert!(sessions.revoke(&token));
        assert!(!sessions.revoke(&token));
        assert!(sessions.get(&token, 0).is_none());
        assert!(sessions.get(&other, 0).is_some());
    }

    #[test]
    fn csrf_tokens_match_only_exactly() {
        let sessions = Sessions::new(100);
        let (_, session) = sessions.create(platform(), 0);
        assert_eq!(session.csrf.len(), 64);
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&session.csrf[..63]));
        assert!(!session.csrf_matches(&format!("{}0", session.csrf)));
        assert!(!session.csrf_matches(&random_token()));
    }

    #[test]
    fn tenant_sessions_reach_their_tenant_only() {
        let tenant = Principal::Tenant {
            tenant: "acme".to_owned(),
            key: "secret".to_owned(),
        };
        assert!(tenant.may_use("acme"));
        assert!(!tenant.may_use("other"));
        assert!(!tenant.may_use("default"));
        assert!(platform().may_use("other"));
        // Keys never show in debug output (logs).
        assert!(!format!("{tenant:?}").contains("secret"));
        assert!(!format!("{:?}", platform()).contains("sovra_pk_x"));
        let sessions = Sessions::new(100);
        let (token, _) = sessions.create(tenant, 0);
        let (kept, _) = sessions.create(platform(), 0);
        sessions.revoke_tenant("acme");
        assert!(sessions.get(&token, 0).is_none());
        assert!(sessions.get(&kept, 0).is_some());
    }

    fn clock() -> u64 {
        1_000
    }

    #[tokio::test]
    async fn the_end_of_a_session_is_signalled_on_sign_out_deletion_and_expiry() {
        let sessions = Sessions::new(100);
        // Sign-out.
        let (token, session) = sessions.create(platform(), 1_000);
        let end = session.end();
        assert!(!end.has_ended());
        let waiting = tokio::spawn(end.clone().wait(clock));
        assert!(sessions.revoke(&token));
        assert!(end.has_ended());
        assert_eq!(waiting.await.unwrap(), Ended::SignedOut);
        // A handshake that comes after the sign-out sees it ended.
        assert!(session.end().has_ended());
        // The tenant's sessions end with it; others do not.
        let tenant = Principal::Tenant {
            tenant: "acme".to_owned(),
            key: "secret".to_owned(),
        };
        let (_, of_acme) = sessions.create(tenant, 1_000);
        let (_, kept) = sessions.create(platform(), 1_000);
        sessions.revoke_tenant("acme");
        assert_eq!(of_acme.end().wait(clock).await, Ended::SignedOut);
        assert!(!kept.end().has_ended());
        // Expiry: the session's end is its lifetime's, on the clock given.
        let (_, old) = sessions.create(platform(), 800);
        assert_eq!(old.expires_at, 900);
        assert_eq!(old.end().wait(clock).await, Ended::Expired);
        // Swept when seen expired: ended too.
        let (expired, swept) = sessions.create(platform(), 0);
        assert!(sessions.get(&expired, 100).is_none());
        assert!(swept.end().has_ended());
        assert_ne!(Ended::SignedOut.reason(), Ended::Expired.reason());
    }

    #[test]
    fn history_keeps_the_latest_distinct_statements() {
        let sessions = Sessions::new(100);
        let (token, _) = sessions.create(platform(), 0);
        for i in 0..(HISTORY + 5) {
            sessions.remember(&token, &format!("select {i}"));
        }
        sessions.remember(&token, "select 10");
        let history = sessions.get(&token, 0).unwrap().history;
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history.back().map(String::as_str), Some("select 10"));
        assert_eq!(history.iter().filter(|s| *s == "select 10").count(), 1);
        assert!(!history.contains(&"select 0".to_owned()));
    }

    #[test]
    fn sign_in_failures_are_limited_per_address_and_window() {
        let limiter = SignInLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..SIGN_IN_FAILURES {
            assert!(limiter.allowed(a, 120));
            limiter.failed(a, 120);
        }
        assert!(!limiter.allowed(a, 121));
        assert!(limiter.allowed(b, 121));
        // The next window starts afresh.
        assert!(limiter.allowed(a, 180));
        // IPv6 addresses of one /64 count together.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        for _ in 0..SIGN_IN_FAILURES {
            limiter.failed(v6a, 300);
        }
        assert!(!limiter.allowed(v6b, 300));
    }
}
