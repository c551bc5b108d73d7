//! In-memory rate limits (fixed windows per key) and the client address
//! behind trusted proxies.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What is being limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Password sign-in and sign-up, per IP and per email.
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

/// A limit: at most `max` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

/// Counters for every bucket and key.
#[derive(Debug, Default)]
pub struct Limiter {
    counters: Mutex<HashMap<(Bucket, String), (Instant, u32)>>,
}

impl Limiter {
    /// Counts one event for `key` in `bucket`; `Err(seconds to wait)` when
    /// over the limit. A limit with `max` 0 is off.
    pub fn hit(&self, bucket: Bucket, key: &str, limit: Limit) -> Result<(), u64> {
        if limit.max == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let Ok(mut counters) = self.counters.lock() else {
            return Ok(());
        };
        if counters.len() > 100_000 {
            counters.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(3600));
        }
        let entry = counters.entry((bucket, key.to_owned())).or_insert((now, 0));
        if now.duration_since(entry.0) >= limit.window {
            *entry = (now, 0);
        }
        if entry.1 >= limit.max {
            let wait = limit.window.saturating_sub(now.duration_since(entry.0));
            return Err(wait.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
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
    fn fixed_window() {
        let limiter = Limiter::default();
        let limit = Limit {
            max: 2,
            window: Duration::from_secs(60),
        };
        assert!(limiter.hit(Bucket::SignIn, "a", limit).is_ok());
        assert!(limiter.hit(Bucket::SignIn, "a", limit).is_ok());
        assert!(limiter.hit(Bucket::SignIn, "a", limit).is_err());
        assert!(limiter.hit(Bucket::SignIn, "b", limit).is_ok());
        assert!(limiter.hit(Bucket::Verify, "a", limit).is_ok());
        let off = Limit {
            max: 0,
            window: Duration::from_secs(1),
        };
        for _ in 0..10 {
            assert!(limiter.hit(Bucket::SignIn, "a", off).is_ok());
        }
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
