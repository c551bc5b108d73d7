//! The limits and timings of one tenant's realtime service.

use std::time::Duration;

/// Limits and timings of one tenant's realtime service.
#[derive(Clone, Debug)]
pub struct RealtimeConfig {
    pub max_connections: usize,
    pub max_channels_per_connection: usize,
    /// Messages a connection may send per second (heartbeats excluded).
    pub max_events_per_second: u32,
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Bytes queued per connection before it counts as too slow.
    pub outbound_queue_bytes: usize,
    /// How long the change feed waits for a subscriber whose queue is more
    /// than half full before it cuts it off.
    pub slow_consumer_timeout: Duration,
    /// `postgres_changes` bindings per channel.
    pub max_bindings_per_channel: usize,
    /// Largest presence state one channel may track (bytes of JSON).
    pub max_presence_bytes: usize,
    /// How often the credentials behind open sockets are re-checked.
    pub revalidate_interval: Duration,
    /// A connection that sends nothing (not even a heartbeat) for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// How often the change feed polls the replication slot.
    pub poll_interval: Duration,
    /// Replication lag (bytes of WAL) past which the feed skips ahead.
    pub max_slot_lag_bytes: u64,
    /// Name of the logical replication slot.
    pub slot_name: String,
    /// How long delivered changes are kept for clients that rejoin with
    /// `since`; zero turns catch-up off.
    pub catchup_window: Duration,
    /// Most changes kept for catch-up.
    pub catchup_max_changes: usize,
    /// Most bytes of changes kept for catch-up.
    pub catchup_max_bytes: usize,
    /// Most bytes of changes the feed holds at once (a batch).
    pub feed_batch_bytes: usize,
    /// Messages per second all connections of this service (one tenant)
    /// may send together (heartbeats excluded); 0: no such limit.
    pub tenant_events_per_second: u32,
    /// The tenant this service belongs to, as `/metrics` labels its quota
    /// refusals (`sovra_tenant_quota_exceeded_total`); `None`: not counted
    /// there (the default tenant).
    pub tenant: Option<String>,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            max_connections: 100_000,
            max_channels_per_connection: 100,
            max_events_per_second: 1000,
            max_frame_bytes: 3_000_000,
            outbound_queue_bytes: 8 << 20,
            slow_consumer_timeout: Duration::from_secs(10),
            max_bindings_per_channel: 100,
            max_presence_bytes: 10_000,
            revalidate_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
            max_slot_lag_bytes: 1 << 30,
            slot_name: "sovra_realtime".to_owned(),
            catchup_window: Duration::from_secs(300),
            catchup_max_changes: 100_000,
            catchup_max_bytes: 64 << 20,
            feed_batch_bytes: 8 << 20,
            tenant_events_per_second: 0,
            tenant: None,
        }
    }
}
