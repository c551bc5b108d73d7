//! Failed guesses of codes, counted in the database (so every instance
//! sees them) per issued one-time code, per MFA challenge and per factor
//! (`sovra.auth_attempts`, migration 0009). A code or challenge that takes
//! `auth.code_attempts` failures is invalidated; a fresh one starts from
//! zero, so guessing never locks the owner out of the next code. A factor
//! that keeps failing across challenges waits longer and longer
//! ([`backoff_secs`]).

use std::time::SystemTime;

use sovra_pg::GenericClient;
use uuid::Uuid;

use crate::db::Cached as _;
use crate::error::AuthResult;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    /// A one-time code in this token column of `auth.users`.
    Code(&'a str),
    /// One MFA challenge.
    Challenge,
    /// One MFA factor, across its challenges.
    Factor,
}

impl Kind<'_> {
    fn name(&self) -> &str {
        match self {
            Kind::Code(column) => column,
            Kind::Challenge => "challenge",
            Kind::Factor => "factor",
        }
    }
}

/// The longest a factor's back-off gets.
pub(crate) const MAX_BACKOFF_SECS: u64 = 300;

/// Seconds a factor must rest after its last failure, once `failures`
/// reached `free` (the failures allowed without waiting): 1, 2, 4, … up to
/// [`MAX_BACKOFF_SECS`].
pub(crate) fn backoff_secs(failures: i64, free: u32) -> u64 {
    let over = failures - i64::from(free);
    if over < 0 {
        return 0;
    }
    let exponent = u32::try_from(over).unwrap_or(u32::MAX).min(16);
    (1u64 << exponent).min(MAX_BACKOFF_SECS)
}

/// Counts one failure of the code or challenge `subject` issued at
/// `issued_at` (a different `issued_at` than the stored one starts
/// afresh); the failures so far.
pub(crate) async fn record_failure(
    client: &impl GenericClient,
    subject: Uuid,
    kind: Kind<'_>,
    issued_at: SystemTime,
) -> AuthResult<i64> {
    let row = client
        .c_query_one(
            "insert into sovra.auth_attempts as a (subject, kind, issued_at, failures, last_failure_at)
             values ($1, $2, $3, 1, now())
             on conflict (subject, kind) do update
               set failures = case when a.issued_at = excluded.issued_at then a.failures + 1 else 1 end,
                   issued_at = excluded.issued_at,
                   last_failure_at = now()
             returning failures::int8",
            &[&subject, &kind.name(), &issued_at],
        )
        .await?;
    Ok(row.get(0))
}

/// The failures so far of the code or challenge `subject` issued at
/// `issued_at` (0 when it was issued after the last counted failure).
pub(crate) async fn failures(
    client: &impl GenericClient,
    subject: Uuid,
    kind: Kind<'_>,
    issued_at: SystemTime,
) -> AuthResult<i64> {
    let row = client
        .c_query_opt(
            "select failures::int8 from sovra.auth_attempts
              where subject = $1 and kind = $2 and issued_at = $3",
            &[&subject, &kind.name(), &issued_at],
        )
        .await?;
    Ok(row.map_or(0, |row| row.get(0)))
}

/// Forgets the failures of `subject` (after a success).
pub(crate) async fn clear(
    client: &impl GenericClient,
    subject: Uuid,
    kind: Kind<'_>,
) -> AuthResult<()> {
    client
        .c_execute(
            "delete from sovra.auth_attempts where subject = $1 and kind = $2",
            &[&subject, &kind.name()],
        )
        .await?;
    Ok(())
}

/// Seconds `subject` must still wait before its next attempt (0: none).
pub(crate) async fn wait_secs(
    client: &impl GenericClient,
    subject: Uuid,
    kind: Kind<'_>,
    free: u32,
) -> AuthResult<u64> {
    let row = client
        .c_query_opt(
            "select failures::int8, extract(epoch from now() - last_failure_at)::float8
               from sovra.auth_attempts where subject = $1 and kind = $2",
            &[&subject, &kind.name()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(0);
    };
    let failures: i64 = row.get(0);
    let elapsed: f64 = row.get(1);
    let rest = backoff_secs(failures, free) as f64 - elapsed;
    Ok(if rest > 0.0 { rest.ceil() as u64 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_after_the_free_failures_and_is_capped() {
        assert_eq!(backoff_secs(0, 5), 0);
        assert_eq!(backoff_secs(4, 5), 0);
        assert_eq!(backoff_secs(5, 5), 1);
        assert_eq!(backoff_secs(6, 5), 2);
        assert_eq!(backoff_secs(9, 5), 16);
        assert_eq!(backoff_secs(40, 5), MAX_BACKOFF_SECS);
        assert_eq!(backoff_secs(i64::MAX, 0), MAX_BACKOFF_SECS);
        assert_eq!(backoff_secs(-3, 5), 0);
    }
}
