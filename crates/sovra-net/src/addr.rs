//! Which addresses outbound requests may reach. Pure: the worker's
//! resolver asks [`Policy::permits`] about every address DNS gave it and
//! connects only to those permitted, so nothing resolves twice.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused, or `None` when it is public.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if a == 0 {
        Some("unspecified")
    } else if a == 127 {
        Some("loopback")
    } else if a == 10 || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168) {
        Some("private")
    } else if a == 169 && b == 254 {
        Some("link-local")
    } else if a == 100 && (64..=127).contains(&b) {
        Some("shared (CGNAT)")
    } else if (224..=239).contains(&a) {
        Some("multicast")
    } else if a >= 240 {
        Some("reserved")
    } else if a == 192 && b == 0 && c == 0 {
        Some("IETF protocol assignment")
    } else if a == 198 && (18..=19).contains(&b) {
        Some("benchmarking")
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4-mapped (::ffff:a.b.c.d): as the IPv4 address. IPv4-compatible
    // (::a.b.c.d, deprecated): refused whatever it embeds.
    if segments[..5] == [0; 5] && (segments[5] == 0xffff || segments[5] == 0) {
        let v4 = Ipv4Addr::new(
            (segments[6] >> 8) as u8,
            segments[6] as u8,
            (segments[7] >> 8) as u8,
            segments[7] as u8,
        );
        return match segments[5] {
            0xffff => classify_v4(v4),
            _ => classify_v4(v4).or(Some("IPv4-compatible")),
        };
    }
    // NAT64 (64:ff9b::/96): the embedded IPv4 address decides.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::new(
            (segments[6] >> 8) as u8,
            segments[6] as u8,
            (segments[7] >> 8) as u8,
            segments[7] as u8,
        );
        return classify_v4(v4);
    }
    // 6to4 (2002::/16) carries an IPv4 address in its next 32 bits.
    if segments[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (segments[1] >> 8) as u8,
            segments[1] as u8,
            (segments[2] >> 8) as u8,
            segments[2] as u8,
        );
        return classify_v4(v4);
    }
    match segments[0] {
        s if s & 0xffc0 == 0xfe80 => Some("link-local"),
        s if s & 0xffc0 == 0xfec0 => Some("site-local"),
        s if s & 0xfe00 == 0xfc00 => Some("private (unique local)"),
        s if s & 0xff00 == 0xff00 => Some("multicast"),
        _ => None,
    }
}

/// One entry of `net.allow_list`: a host name (the URL's, exactly, case
/// insensitive), an address, or a network in CIDR notation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    Host(String),
    Net(IpAddr, u8),
}

impl Allowed {
    /// Parses one entry; `None` when it is neither a network, an address
    /// nor a plausible host name.
    pub fn parse(entry: &str) -> Option<Allowed> {
        let entry = entry.trim();
        if let Some((ip, len)) = entry.split_once('/') {
            let ip: IpAddr = ip.parse().ok()?;
            let len: u8 = len.parse().ok()?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            return (len <= max).then_some(Allowed::Net(ip, len));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            return Some(Allowed::Net(ip, len));
        }
        let valid = !entry.is_empty()
            && entry.len() <= 253
            && entry.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        valid.then(|| Allowed::Host(entry.to_ascii_lowercase()))
    }

    fn permits(&self, host: &str, ip: IpAddr) -> bool {
        match self {
            Allowed::Host(name) => host.eq_ignore_ascii_case(name),
            Allowed::Net(net, len) => in_network(ip, *net, *len),
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(ip) & mask == u128::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V4(_)) => match ip.to_ipv4_mapped() {
            Some(v4) => in_network(IpAddr::V4(v4), net, len),
            None => false,
        },
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    }
}

/// What outbound requests may reach.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Every address (`net.allow_private`).
    pub allow_private: bool,
    /// Hosts and networks allowed even when their addresses are not public
    /// (`net.allow_list`).
    pub allow_list: Vec<Allowed>,
}

impl Policy {
    /// `Ok` when a request to `host` may connect to `ip`, else why not.
    pub fn permits(&self, host: &str, ip: IpAddr) -> Result<(), String> {
        let Some(reason) = classify(ip) else {
            return Ok(());
        };
        if self.allow_private || self.allow_list.iter().any(|a| a.permits(host, ip)) {
            return Ok(());
        }
        Err(format!(
            "refused: {host} resolves to {ip}, a {reason} address (set net.allow_private or net.allow_list to allow it)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_every_non_public_range() {
        for (addr, reason) in [
            ("0.0.0.0", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.1.2", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.254", "shared (CGNAT)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private (unique local)"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
        ] {
            assert_eq!(classify(ip(addr)), Some(reason), "{addr}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(classify(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn allow_list_by_host_and_network() {
        let policy = Policy {
            allow_private: false,
            allow_list: ["hooks.internal", "10.0.0.0/8", "::1"]
                .iter()
                .map(|e| Allowed::parse(e).unwrap())
                .collect(),
        };
        assert!(policy.permits("HOOKS.internal", ip("192.168.0.9")).is_ok());
        assert!(policy.permits("x", ip("10.9.9.9")).is_ok());
        assert!(policy.permits("x", ip("::ffff:10.9.9.9")).is_ok());
        assert!(policy.permits("x", ip("::1")).is_ok());
        let refused = policy
            .permits("other.internal", ip("192.168.0.9"))
            .unwrap_err();
        assert!(refused.contains("private"), "{refused}");
        assert!(policy.permits("x", ip("127.0.0.1")).is_err());
        assert!(
            Policy {
                allow_private: true,
                allow_list: vec![]
            }
            .permits("x", ip("127.0.0.1"))
            .is_ok()
        );
    }

    #[test]
    fn allow_list_entries_parse_or_refuse() {
        assert_eq!(
            Allowed::parse("10.0.0.0/8"),
            Some(Allowed::Net(ip("10.0.0.0"), 8))
        );
        assert_eq!(
            Allowed::parse("Example.COM"),
            Some(Allowed::Host("example.com".into()))
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "a..b",
            "http://x",
            "x y",
            "1.2.3.4/x",
        ] {
            assert_eq!(Allowed::parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn mapped_addresses_classify_as_their_ipv4(a: u8, b: u8, c: u8, d: u8) {
            let v4 = Ipv4Addr::new(a, b, c, d);
            prop_assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), classify(IpAddr::V4(v4)));
        }

        #[test]
        fn a_network_contains_its_own_address(a: u32, len in 0u8..=32) {
            let net = IpAddr::V4(Ipv4Addr::from(a));
            prop_assert!(in_network(net, net, len));
        }
    }
}
