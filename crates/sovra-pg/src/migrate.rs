//! Versioned SQL migrations, embedded in the binary and applied in order
//! under an advisory lock, so that several Sovra instances starting at once
//! apply each migration exactly once.
//!
//! Applied versions are recorded in `sovra.schema_migrations` with a
//! checksum; a migration edited after it was applied is refused rather than
//! silently skipped.

use sha2::{Digest as _, Sha256};

/// One embedded migration.
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Sovra's migrations, oldest first. Append only: never edit or renumber one
/// that has shipped.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "roles",
        sql: include_str!("../migrations/0001_roles.sql"),
    },
    Migration {
        version: 2,
        name: "schemas",
        sql: include_str!("../migrations/0002_schemas.sql"),
    },
    Migration {
        version: 3,
        name: "auth_helpers",
        sql: include_str!("../migrations/0003_auth_helpers.sql"),
    },
    Migration {
        version: 4,
        name: "schema_reload",
        sql: include_str!("../migrations/0004_schema_reload.sql"),
    },
    Migration {
        version: 5,
        name: "auth_schema",
        sql: include_str!("../migrations/0005_auth_schema.sql"),
    },
    Migration {
        version: 6,
        name: "sovra_auth",
        sql: include_str!("../migrations/0006_sovra_auth.sql"),
    },
    Migration {
        version: 7,
        name: "storage_schema",
        sql: include_str!("../migrations/0007_storage_schema.sql"),
    },
    Migration {
        version: 8,
        name: "realtime",
        sql: include_str!("../migrations/0008_realtime.sql"),
    },
    Migration {
        version: 9,
        name: "auth_attempts",
        sql: include_str!("../migrations/0009_auth_attempts.sql"),
    },
    Migration {
        version: 10,
        name: "storage_hardening",
        sql: include_str!("../migrations/0010_storage_hardening.sql"),
    },
    Migration {
        version: 11,
        name: "realtime_replay",
        sql: include_str!("../migrations/0011_realtime_replay.sql"),
    },
    Migration {
        version: 12,
        name: "tenants",
        sql: include_str!("../migrations/0012_tenants.sql"),
    },
    Migration {
        version: 13,
        name: "storage_s3",
        sql: include_str!("../migrations/0013_storage_s3.sql"),
    },
    Migration {
        version: 14,
        name: "oauth_flows",
        sql: include_str!("../migrations/0014_oauth_flows.sql"),
    },
    Migration {
        version: 15,
        name: "session_reset",
        sql: include_str!("../migrations/0015_session_reset.sql"),
    },
    Migration {
        version: 16,
        name: "tenant_quotas",
        sql: include_str!("../migrations/0016_tenant_quotas.sql"),
    },
    Migration {
        version: 17,
        name: "oauth_server",
        sql: include_str!("../migrations/0017_oauth_server.sql"),
    },
    Migration {
        version: 18,
        name: "webauthn_linking",
        sql: include_str!("../migrations/0018_webauthn_linking.sql"),
    },
    Migration {
        version: 19,
        name: "net",
        sql: include_str!("../migrations/0019_net.sql"),
    },
    Migration {
        version: 20,
        name: "vector_buckets",
        sql: include_str!("../migrations/0020_vector_buckets.sql"),
    },
    Migration {
        version: 21,
        name: "queues",
        sql: include_str!("../migrations/0021_queues.sql"),
    },
    Migration {
        version: 22,
        name: "cron",
        sql: include_str!("../migrations/0022_cron.sql"),
    },
    Migration {
        version: 23,
        name: "rate_limits",
        sql: include_str!("../migrations/0023_rate_limits.sql"),
    },
    Migration {
        version: 24,
        name: "idempotency",
        sql: include_str!("../migrations/0024_idempotency.sql"),
    },
    Migration {
        version: 25,
        name: "net_claim_index",
        sql: include_str!("../migrations/0025_net_claim_index.sql"),
    },
    Migration {
        version: 26,
        name: "tenant_secrets",
        sql: include_str!("../migrations/0026_tenant_secrets.sql"),
    },
    Migration {
        version: 27,
        name: "cron_notify",
        sql: include_str!("../migrations/0027_cron_notify.sql"),
    },
];

/// Serialises migrations of one database across processes
/// (`pg_advisory_lock` keys are scoped to the current database).
const LOCK_KEY: i64 = 0x736f_7672_615f_6d69; // "sovra_mi"

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration {version} ({name}) failed: {source}")]
    Failed {
        version: i32,
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {version} ({name}) was changed after it was applied to this database; restore it and add a new migration instead"
    )]
    Changed { version: i32, name: &'static str },
    #[error(
        "this database has migration {0}, newer than this Sovra knows; run the newer Sovra or restore a backup"
    )]
    TooNew(i32),
    #[error("migration bookkeeping failed: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// What [`migrate`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call (empty when the database was current).
    pub applied: Vec<i32>,
    /// Whether pgvector is installed in the database (`extensions.vector`).
    pub vector: bool,
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Applies every pending migration, each in its own transaction, holding a
/// session advisory lock for the whole run. Running it again changes nothing.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<MigrationReport, MigrateError> {
    client
        .execute("select pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = migrate_locked(client).await;
    // Unlock even after a failure; the session ends soon in any case.
    let _ = client
        .execute("select pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

async fn migrate_locked(
    client: &mut tokio_postgres::Client,
) -> Result<MigrationReport, MigrateError> {
    client
        .batch_execute(
            "create schema if not exists sovra;
             create table if not exists sovra.schema_migrations (
               version integer primary key,
               name text not null,
               checksum text not null,
               applied_at timestamptz not null default now()
             );",
        )
        .await?;
    let rows = client
        .query(
            "select version, checksum from sovra.schema_migrations order by version",
            &[],
        )
        .await?;
    let applied: Vec<(i32, String)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    let known_max = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some((version, _)) = applied.iter().find(|(version, _)| *version > known_max) {
        return Err(MigrateError::TooNew(*version));
    }

    let mut report = MigrationReport::default();
    for migration in MIGRATIONS {
        let sum = checksum(migration.sql);
        if let Some((_, recorded)) = applied.iter().find(|(v, _)| *v == migration.version) {
            if *recorded != sum {
                return Err(MigrateError::Changed {
                    version: migration.version,
                    name: migration.name,
                });
            }
            continue;
        }
        let failed = |source| MigrateError::Failed {
            version: migration.version,
            name: migration.name,
            source,
        };
        let tx = client.transaction().await?;
        tx.batch_execute(migration.sql).await.map_err(failed)?;
        tx.execute(
            "insert into sovra.schema_migrations (version, name, checksum) values ($1, $2, $3)",
            &[&migration.version, &migration.name, &sum],
        )
        .await?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "migration applied"
        );
        report.applied.push(migration.version);
    }

    report.vector = ensure_vector(client).await?;
    Ok(report)
}

/// Installs pgvector into `extensions` when the server has it; warns when it
/// does not (vector search is then unavailable, everything else works).
async fn ensure_vector(client: &tokio_postgres::Client) -> Result<bool, MigrateError> {
    let available = client
        .query_opt(
            "select 1 from pg_available_extensions where name = 'vector'",
            &[],
        )
        .await?
        .is_some();
    if !available {
        tracing::warn!(
            "pgvector is not installed on this postgresql server; vector columns are unavailable (scripts/setup.sh installs it)"
        );
        return Ok(false);
    }
    client
        .batch_execute(
            "create extension if not exists vector with schema extensions;
             select storage.vector_store_ready();",
        )
        .await?;
    Ok(true)
}

/// The versions recorded as applied in the connected database.
pub async fn applied_versions(
    client: &tokio_postgres::Client,
) -> Result<Vec<i32>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select version from sovra.schema_migrations order by version",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Whether every migration this binary knows is applied.
pub async fn is_current(client: &tokio_postgres::Client) -> Result<bool, tokio_postgres::Error> {
    let have = applied_versions(client).await?;
    Ok(MIGRATIONS.iter().all(|m| have.contains(&m.version)))
}
