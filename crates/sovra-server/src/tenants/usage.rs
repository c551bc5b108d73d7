//! What the registry tells of each tenant's use for the dashboard's
//! usage pictures: its state, its database's size (one
//! `pg_database_size` query for every database on the platform's cluster)
//! and its quotas (its own settings over the platform's defaults). What a
//! running tenant holds (pool, realtime, stored bytes, requests) is added
//! by the server's dashboard host.

use serde_json::{Value, json};

use super::{Platform, db_error};

/// One tenant of the registry, as the usage pictures need it.
#[derive(Debug)]
pub(crate) struct RegistryUsage {
    pub(crate) name: String,
    pub(crate) suspended: bool,
    /// `None` for a tenant whose database is not on the platform's
    /// cluster (its own `database_url`).
    pub(crate) database_bytes: Option<u64>,
    /// `database_max_bytes`, `storage_max_bytes`, `max_concurrent_requests`,
    /// `requests_per_second`, `realtime_max_connections`, `pool_size`
    /// (0: no quota).
    pub(crate) quotas: Value,
}

impl Platform {
    /// The tenants of the registry (only `only` when given; none when it
    /// does not exist), in name order.
    pub(crate) async fn registry_usage(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<RegistryUsage>, String> {
        let records = match only {
            Some(name) => self.record(name).await?.into_iter().collect(),
            None => self.records().await?,
        };
        let databases: Vec<&str> = records
            .iter()
            .filter(|r| r.database_url.is_none())
            .map(|r| r.database.as_str())
            .collect();
        let sizes: std::collections::HashMap<String, i64> = if databases.is_empty() {
            std::collections::HashMap::new()
        } else {
            let client = self.admin_client().await?;
            client
                .query(
                    "select datname::text, pg_database_size(datname) from pg_database where datname = any($1)",
                    &[&databases],
                )
                .await
                .map_err(|err| db_error(&err))?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect()
        };
        let config = &self.config;
        Ok(records
            .iter()
            .map(|record| {
                let settings = &record.settings;
                let quotas = self.quotas(&record.name, settings);
                RegistryUsage {
                    name: record.name.clone(),
                    suspended: record.suspended,
                    database_bytes: record
                        .database_url
                        .is_none()
                        .then(|| sizes.get(&record.database))
                        .flatten()
                        .and_then(|size| u64::try_from(*size).ok()),
                    quotas: json!({
                        "database_max_bytes": self.database_max_bytes(settings),
                        "storage_max_bytes": quotas.storage_max_bytes,
                        "max_concurrent_requests": quotas.max_concurrent_requests,
                        "requests_per_second": settings.requests_per_second.unwrap_or(0),
                        "realtime_max_connections": settings
                            .realtime_max_connections
                            .unwrap_or(config.realtime.max_connections),
                        "pool_size": settings.pool_size.unwrap_or(config.database.pool_size),
                    }),
                }
            })
            .collect())
    }
}
