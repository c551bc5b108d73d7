//! PostgreSQL for Sovra: the embedded cluster Sovra manages when no database
//! URL is configured ([`cluster`]), the connection pool ([`pool`]), the
//! versioned migrations embedded in the binary ([`migrate`]), the roles
//! Sovra's pools log in as ([`logins`]), the
//! per-request transaction that sets role and request settings
//! ([`request`]), and the classification of database errors ([`ErrorKind`]).
//!
//! This crate knows nothing of HTTP. It never builds SQL from request data:
//! request values reach PostgreSQL only as bound parameters.

pub mod cluster;
mod error;
pub mod logins;
pub mod migrate;
pub mod pool;
pub mod request;

pub use cluster::{Cluster, ClusterError, ClusterOptions, PgBinaries};
pub use error::{ErrorKind, error_kind, is_bad_text};
pub use logins::{LoginError, Logins};
pub use migrate::{MigrateError, MigrationReport, migrate};
pub use pool::{
    ClientWrapper, GenericClient, Pool, PoolError, PooledClient, StatementCache, connect_listening,
    connect_one,
};
pub use request::{
    PROLOGUE_SQL, PrologueRef, REQUEST_SETTINGS_SQL, RESET_FROM, RESET_SQL, ROLE_SETTING_NAMES,
    ROLE_SETTINGS_SQL, RequestContext, begin_request, prologue_params, prologue_params_of,
    reset_refused,
};

/// Re-exported so that callers use the same driver version.
pub use tokio_postgres;
