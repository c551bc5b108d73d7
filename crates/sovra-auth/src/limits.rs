//! In-memory rate limits (token buckets per key), the key a client is
//! counted under (IPv6 grouped by /64), and the client address behind
//! trusted proxies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Password sign-in and sign-up, per IP and per account and IP.
    SignIn,
    /// `/verify` and MFA verification, per IP.
    Verify,
    /// `grant_type=refresh_token`, per IP.
    Refresh,
    /// `/otp`, `/magiclink`, `/recover`, `/resend`, per IP.
    Otp,
    /// Mail and SMS sent, per address.
    EmailSent,
    /// Anonymous sign-ins, per IP.
    Anonymous,
}

impl Bucket {
    /// Its name in `sovra.rate_limits`.
    pub fn name(self) -> &'static str {
        match self {
            Bucket::SignIn => "sign_in",
            Bucket::Verify => "verify",
            Bucket::Refresh => "refresh",
            Bucket::Otp => "otp",
            Bucket::EmailSent => "email_sent",
            Bucket::Anonymous => "anonymous",
        }
    }
}

/// A limit: a bucket of `max` tokens (the burst) that refills at `max` per
/// `window`, continuously (GoTrue's token buckets, not fixed windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

/// One key's bucket: tokens left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Tokens {
    at: Instant,
    left: f64,
}

/// Buckets for every kind and key.
#[derive(Debug, Default)]
pub struct Limiter {
    counters: Mutex<HashMap<(Bucket, String), Tokens>>,
}

impl Limiter {
    /// Takes one token for `key` in `bucket`; `Err(seconds to wait)` when
    /// the bucket is empty. A limit with `max` 0 is off.
    pub fn hit(&self, bucket: Bucket, key: &str, limit: Limit) -> Result<(), u64> {
        self.hit_at(bucket, key, limit, Instant::now())
    }

    /// [`Limiter::hit`] at a given instant (tests pass the clock in).
    pub fn hit_at(&self, bucket: Bucket, key: &str, limit: Limit, now: Instant) -> Result<(), u64> {
        if limit.max == 0 {
            return Ok(());
        }
        let Ok(mut counters) = self.counters.lock() else {
            return Ok(());
        };
        let max = f64::from(limit.max);
        // Tokens per second; a zero window refills at once.
        let rate = max / limit.window.as_secs_f64().max(1e-9);
        if counters.len() > 100_000 {
            // Full buckets carry no state: forget them.
            counters.retain(|_, t| {
                t.left + now.saturating_duration_since(t.at).as_secs_f64() * rate < max
            });
        }
        let entry = counters
            .entry((bucket, key.to_owned()))
            .or_insert(Tokens { at: now, left: max });
        let elapsed = now.saturating_duration_since(entry.at).as_secs_f64();
        entry.left = (entry.left + elapsed * rate).min(max);
        entry.at = now;
        if entry.left < 1.0 {
            // (Less a hair, so that float noise does not add a second.)
            let wait = (1.0 - entry.left) / rate - 1e-6;
            return Err((wait.ceil() as u64).max(1));
        }
        entry.left -= 1.0;
        Ok(())
    }
}

/// The key a client address is counted under: an IPv4 address as it is,
/// an IPv6 address by its /64 (one subscriber's prefix, which a client can
/// rotate freely within).
pub fn client_key(ip: IpAddr) -> String {
    match client_prefix(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(prefix) => format!("{prefix}/64"),
    }
}

/// The address a client is counted under, without formatting it: an IPv4
/// address (IPv4-mapped IPv6 included) as it is, an IPv6 address as its
/// /64 with the host bits cleared.
pub fn client_prefix(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
    }
}

/// A CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `::1`, `192.168.1.7`.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let addr = text.trim().parse::<IpAddr>().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return None;
        }
        // `::ffff:a.b.c.d/n` is the IPv4 block `a.b.c.d/(n - 96)`.
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
            && prefix >= 96
        {
            return Some(Cidr {
                addr: IpAddr::V4(v4),
                prefix: prefix - 96,
            });
        }
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in
/// which case the right-most `X-Forwarded-For` entry that is not itself a
/// trusted proxy.
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    if !trusted.iter().any(|c| c.contains(peer)) {
        return Some(peer);
    }
    let Some(header) = forwarded_for else {
        return Some(peer);
    };
    let mut chosen = peer;
    for hop in header.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        chosen = canonical(ip);
        if !trusted.iter().any(|c| c.contains(chosen)) {
            break;
        }
    }
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_buckets_allow_a_burst_then_refill() {
        let limiter = Limiter::default();
        let limit = Limit {
            max: 2,
            window: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        assert!(limiter.hit_at(Bucket::SignIn, "a", limit, t0).is_ok());
        assert!(limiter.hit_at(Bucket::SignIn, "a", limit, t0).is_ok());
        // Empty: one token comes back every 30 s.
        assert_eq!(limiter.hit_at(Bucket::SignIn, "a", limit, t0), Err(30));
        assert_eq!(
            limiter.hit_at(Bucket::SignIn, "a", limit, t0 + Duration::from_secs(20)),
            Err(10)
        );
        // Other keys and kinds have their own buckets.
        assert!(limiter.hit_at(Bucket::SignIn, "b", limit, t0).is_ok());
        assert!(limiter.hit_at(Bucket::Verify, "a", limit, t0).is_ok());
        // A refill gives one more, not a whole new window.
        let later = t0 + Duration::from_secs(31);
        assert!(limiter.hit_at(Bucket::SignIn, "a", limit, later).is_ok());
        assert!(limiter.hit_at(Bucket::SignIn, "a", limit, later).is_err());
        // Refilling stops at the burst size.
        let much_later = t0 + Duration::from_secs(3600);
        assert!(
            limiter
                .hit_at(Bucket::SignIn, "a", limit, much_later)
                .is_ok()
        );
        assert!(
            limiter
                .hit_at(Bucket::SignIn, "a", limit, much_later)
                .is_ok()
        );
        assert!(
            limiter
                .hit_at(Bucket::SignIn, "a", limit, much_later)
                .is_err()
        );
        let off = Limit {
            max: 0,
            window: Duration::from_secs(1),
        };
        for _ in 0..10 {
            assert!(limiter.hit(Bucket::SignIn, "a", off).is_ok());
        }
    }

    #[test]
    fn ipv6_clients_are_grouped_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_eq!(client_key(a), "2001:db8:1:2::/64");
        assert_ne!(client_key(a), client_key(other));
        // IPv4, also when mapped into IPv6, stays one address.
        assert_eq!(client_key("203.0.113.7".parse().unwrap()), "203.0.113.7");
        assert_eq!(
            client_key("::ffff:203.0.113.7".parse().unwrap()),
            "203.0.113.7"
        );
        // Addresses of one /64 share a bucket.
        let limiter = Limiter::default();
        let limit = Limit {
            max: 1,
            window: Duration::from_secs(60),
        };
        assert!(limiter.hit(Bucket::Verify, &client_key(a), limit).is_ok());
        assert!(limiter.hit(Bucket::Verify, &client_key(b), limit).is_err());
        assert!(
            limiter
                .hit(Bucket::Verify, &client_key(other), limit)
                .is_ok()
        );
    }

    #[test]
    fn forwarded_only_from_trusted_proxies() {
        let trusted = vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("::1").unwrap(),
        ];
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_ip(Some(peer), Some("198.51.100.1, 10.0.0.5"), &trusted),
            Some("198.51.100.1".parse().unwrap())
        );
        // A client spoofing the header directly is not believed.
        assert_eq!(
            client_ip(Some(outsider), Some("1.2.3.4"), &trusted),
            Some(outsider)
        );
        assert_eq!(client_ip(Some(peer), Some("junk"), &trusted), Some(peer));
        assert_eq!(
            client_ip(Some("::1".parse().unwrap()), Some("198.51.100.2"), &trusted),
            Some("198.51.100.2".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(
            Cidr::parse("::ffff:10.0.0.1").is_some_and(|c| c.contains("10.0.0.1".parse().unwrap()))
        );
    }
}
