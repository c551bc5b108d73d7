//! Pure parts of Sovra's realtime service, without IO:
//!
//! - [`frame`]: Phoenix channel messages as realtime-js and supabase-py send
//!   them: vsn 1.0.0 (JSON objects), vsn 2.0.0 (JSON arrays, and the binary
//!   broadcast frames of kind 3 in and kind 4 out);
//! - [`filter`]: `postgres_changes` filters (`column=op.value`) and their
//!   evaluation against a changed row;
//! - [`pgoutput`]: the messages of PostgreSQL's `pgoutput` logical
//!   decoding plugin (protocol version 1), and the conversion of their text
//!   values to JSON by column type;
//! - [`replication`]: the frontend/backend protocol as a logical
//!   replication client speaks it (startup, authentication, `CopyBoth`
//!   with `XLogData`, keepalives and standby status updates).

pub mod filter;
pub mod frame;
pub mod pgoutput;
pub mod replication;
