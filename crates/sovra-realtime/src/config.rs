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
    /// Frames queued per connection before it counts as too slow.
    pub outbound_queue: usize,
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
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            max_connections: 100_000,
            max_channels_per_connection: 100,
            max_events_per_second: 1000,
            max_frame_bytes: 3_000_000,
            outbound_queue: 1024,
            idle_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
            max_slot_lag_bytes: 1 << 30,
            slot_name: "sovra_realtime".to_owned(),
            catchup_window: Duration::from_secs(300),
            catchup_max_changes: 100_000,
        }
    }
}
