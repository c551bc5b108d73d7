//! Rate limits counted in PostgreSQL, shared by every node on the database
//! (`server.shared_state = postgres`): the token buckets of [`Limiter`]
//! (same burst, same continuous refill), one row per limit and key in
//! `sovra.rate_limits`, taken by one `INSERT .. ON CONFLICT DO UPDATE`.
//! The row lock orders concurrent takes, from any node, so N takes meet a
//! limit of N exactly; the database's clock is the only clock.
//!
//! [`Limiter`]: crate::limits::Limiter

use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use sovra_pg::Pool;

use crate::db::Cached;
use crate::limits::{Bucket, Limit};

/// Takes one token, or says when the next comes back. `$1` bucket,
/// `$2` key digest, `$3` burst, `$4` refill per second. `allowed` is
/// stored because RETURNING sees only the new row.
const TAKE: &str = "insert into sovra.rate_limits as b (bucket, key, tokens, at, allowed, full_at)
     values ($1, $2, $3::float8 - 1, now(), true,
             now() + make_interval(secs => 1 / $4::float8))
     on conflict (bucket, key) do update set (tokens, allowed, at, full_at) = (
       select t.left, t.ok, t.now,
              t.now + make_interval(secs => greatest($3::float8 - t.left, 0) / $4::float8)
         from (select s.r >= 1 - 1e-9 as ok,
                      case when s.r >= 1 - 1e-9 then greatest(s.r - 1, 0) else s.r end as left,
                      s.now
                 from (select least($3::float8,
                                    b.tokens + greatest(extract(epoch from now() - b.at)::float8, 0)
                                               * $4::float8) as r,
                              greatest(b.at, now()) as now) s) t)
     returning allowed, tokens";

/// Rows of full buckets carry no state.
const SWEEP: &str = "delete from sovra.rate_limits where full_at < now()";

/// A sweep of full buckets every this many takes (per tenant).
const SWEEP_EVERY: u64 = 1024;

/// Counts takes, to sweep now and then.
#[derive(Debug, Default)]
pub(crate) struct SharedLimiter {
    takes: AtomicU64,
}

impl SharedLimiter {
    /// Takes one token for `key` in `bucket` from the shared bucket;
    /// `Ok(Err(seconds to wait))` when it is empty, `Err` when the
    /// database could not be asked. A limit with `max` 0 is off.
    pub(crate) async fn take(
        &self,
        pool: &Pool,
        bucket: Bucket,
        key: &str,
        limit: Limit,
    ) -> Result<Result<(), u64>, String> {
        if limit.max == 0 {
            return Ok(Ok(()));
        }
        let max = f64::from(limit.max);
        // Tokens per second; a zero window refills at once.
        let rate = max / limit.window.as_secs_f64().max(1e-9);
        let digest = Sha256::digest(key.as_bytes()).to_vec();
        let client = pool.get().await.map_err(|err| err.to_string())?;
        let row = client
            .c_query_one(TAKE, &[&bucket.name(), &digest, &max, &rate])
            .await
            .map_err(|err| err.to_string())?;
        let allowed: bool = row.get(0);
        let left: f64 = row.get(1);
        if self.takes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1
            && let Err(err) = client.c_execute(SWEEP, &[]).await
        {
            tracing::warn!(error = %err, "sweeping full rate-limit buckets failed");
        }
        if allowed {
            return Ok(Ok(()));
        }
        // (Less a hair, so that float noise does not add a second.)
        let wait = (1.0 - left) / rate - 1e-6;
        Ok(Err((wait.ceil() as u64).max(1)))
    }
}
