//! Sovra's `/realtime/v1`: Phoenix channels over WebSocket as realtime-js
//! (vsn 2.0.0) and supabase-py (vsn 1.0.0) speak them.
//!
//! A database change travels one way through these modules, each importing
//! only the ones before it:
//!
//! 1. **decode** — [`slot`] reads committed transactions from the logical
//!    replication slot, streamed over a [`replication`] connection (or
//!    polled where PostgreSQL refuses one); `sovra-realtime-proto` frames
//!    the protocol and decodes `pgoutput` (pure);
//!    [`catalog`] describes each table from this database's catalog;
//!    [`change`] is the type every later stage carries.
//! 2. **authorise** — [`authorize`] asks PostgreSQL which changes each
//!    group of subscribers with the same claims may see, by the real
//!    table's privileges and policies.
//! 3. **fan out** — [`fanout`] queues each visible change, serialised
//!    once, to the channels of [`hub`]; [`bus`] carries batches to the
//!    other instances (which authorise them for their own subscribers).
//! 4. **sockets** — [`socket`] runs one connection: joins, broadcast,
//!    presence, token refresh, limits, and the writer that drains the
//!    connection's queue.
//!
//! [`service`] owns the stages of one tenant and wires them together;
//! [`authz`] authorises private channels; [`revalidate`] re-checks the
//! credentials behind open sockets; [`overview`] is what the dashboard
//! shows of the topics; [`principal`] and [`config`]
//! are the plain types every stage shares. This file only declares the
//! modules and hands a WebSocket to [`socket`].

mod authorize;
mod authz;
pub mod bus;
mod catalog;
mod change;
mod config;
mod fanout;
mod hub;
mod overview;
mod principal;
pub mod replication;
mod revalidate;
mod service;
mod slot;
mod socket;

pub use config::RealtimeConfig;
pub use overview::OverviewLimits;
pub use principal::{Principal, Verifier};
pub use revalidate::{Credential, RevalidateFuture, Revalidator};
pub use service::{ConnectionPermit, HttpError, RealtimeService};
pub use slot::FeedMode;
pub use sovra_realtime_proto::frame::Vsn;

use std::sync::Arc;

/// What ends a connection from outside before the client does (the
/// dashboard session it was opened for, say): it resolves with the reason
/// the close frame (code 1008) carries.
pub type EndSignal = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

impl RealtimeService {
    /// Serves one WebSocket connection until it closes.
    pub async fn serve(
        self: Arc<Self>,
        socket: axum::extract::ws::WebSocket,
        vsn: Vsn,
        principal: Principal,
        permit: ConnectionPermit,
    ) {
        socket::run(self, socket, vsn, principal, None).await;
        drop(permit);
    }

    /// Serves one WebSocket connection until it closes or `until`
    /// resolves, which closes it with code 1008 and the reason given.
    pub async fn serve_until(
        self: Arc<Self>,
        socket: axum::extract::ws::WebSocket,
        vsn: Vsn,
        principal: Principal,
        permit: ConnectionPermit,
        until: EndSignal,
    ) {
        socket::run(self, socket, vsn, principal, Some(until)).await;
        drop(permit);
    }
}
