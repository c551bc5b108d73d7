//! A cap on the open connections of one client (`server.max_connections_per_client`).
//!
//! Every other limit (request rate, body idle time, header read time)
//! applies to a connection once it exists; this one bounds how many a
//! single client may hold at once, so that one address cannot take the
//! process's file descriptors (and each connection's memory) from
//! everyone else. A client is an IPv4 address or an IPv6 /64 (one
//! subscriber's prefix, which a client can usually cycle through at will).
//! Loopback peers and `auth.trusted_proxies` are not counted: a reverse
//! proxy carries many clients on its few addresses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use sovra_auth::limits::Cidr;

/// The open connections per client, shared by the accept loop and the
/// connections' [`Slot`]s.
#[derive(Clone, Debug)]
pub struct ClientConnections {
    limit: usize,
    loopback_counts: bool,
    exempt: Arc<[Cidr]>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One counted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Slot {
    client: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ClientConnections {
    /// At most `limit` open connections per client (at least 1), peers in
    /// `exempt` and loopback peers not counted.
    pub fn new(limit: usize, exempt: Vec<Cidr>) -> ClientConnections {
        ClientConnections {
            limit: limit.max(1),
            loopback_counts: false,
            exempt: exempt.into(),
            open: Arc::default(),
        }
    }

    /// Counts loopback peers too (tests, whose clients are all local).
    #[must_use]
    pub fn counting_loopback(mut self) -> ClientConnections {
        self.loopback_counts = true;
        self
    }

    /// A place for a new connection from `peer`: `Ok(None)` when `peer` is
    /// not counted, `Err(())` when its client holds `limit` already.
    #[allow(clippy::result_unit_err)]
    pub fn admit(&self, peer: IpAddr) -> Result<Option<Slot>, ()> {
        let peer = peer.to_canonical();
        if (peer.is_loopback() && !self.loopback_counts)
            || self.exempt.iter().any(|cidr| cidr.contains(peer))
        {
            return Ok(None);
        }
        let client = sovra_auth::limits::client_prefix(peer);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= self.limit {
            return Err(());
        }
        *count += 1;
        Ok(Some(Slot {
            client,
            open: self.open.clone(),
        }))
    }

    /// How many clients hold a connection now (for tests).
    pub fn clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// A connection's socket with its client's [`Slot`]: the place is given
/// back when the socket closes, also when an upgrade (a WebSocket) took it
/// over from the HTTP connection that accepted it.
#[derive(Debug)]
pub struct Counted<S> {
    stream: S,
    _slot: Option<Slot>,
}

impl<S> Counted<S> {
    pub fn new(stream: S, slot: Option<Slot>) -> Counted<S> {
        Counted {
            stream,
            _slot: slot,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_client_holds_at_most_the_limit_and_gets_places_back() {
        let cap = ClientConnections::new(2, Vec::new());
        let a = cap.admit(ip("203.0.113.7")).unwrap().unwrap();
        let b = cap.admit(ip("203.0.113.7")).unwrap().unwrap();
        assert!(cap.admit(ip("203.0.113.7")).is_err());
        // Another client is not affected.
        let other = cap.admit(ip("203.0.113.8")).unwrap().unwrap();
        drop(a);
        let c = cap.admit(ip("203.0.113.7")).unwrap().unwrap();
        drop((b, c, other));
        assert_eq!(cap.clients(), 0, "closed connections leave no entry");
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_ipv4_as_ipv4() {
        let cap = ClientConnections::new(1, Vec::new());
        let _a = cap.admit(ip("2001:db8:1:2::1")).unwrap().unwrap();
        assert!(cap.admit(ip("2001:db8:1:2:ffff::9")).is_err());
        let _b = cap.admit(ip("2001:db8:1:3::1")).unwrap().unwrap();
        let _c = cap.admit(ip("198.51.100.1")).unwrap().unwrap();
        assert!(cap.admit(ip("::ffff:198.51.100.1")).is_err());
    }

    #[test]
    fn loopback_and_trusted_proxies_are_not_counted() {
        let proxies = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let cap = ClientConnections::new(1, proxies);
        for _ in 0..3 {
            assert!(cap.admit(ip("127.0.0.1")).unwrap().is_none());
            assert!(cap.admit(ip("::1")).unwrap().is_none());
            assert!(cap.admit(ip("10.1.2.3")).unwrap().is_none());
        }
        assert_eq!(cap.clients(), 0);
    }
}
