//! The roles Sovra's pools log in as, never a superuser: `authenticator`
//! (requests, which may only switch to the API roles) and
//! `supabase_auth_admin` (auth, which owns the `auth` tables), as on
//! Supabase.
//!
//! Each gets a password that PostgreSQL generates on first use and keeps in
//! `sovra.login_secrets`, readable only by the administrative user, so every
//! instance that shares the database uses the same one and no password
//! appears in any statement text (a server logging statements logs none).
//! A role whose password is missing or does not work any more (another
//! database of the cluster set it) gets it set again with `ALTER ROLE`.

use tokio_postgres::Client;

/// The role request pools log in as.
pub const AUTHENTICATOR: &str = "authenticator";
/// The role the auth pool logs in as.
pub const AUTH_ADMIN: &str = "supabase_auth_admin";

/// Why the login roles could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("cannot prepare the login of `{role}`: {source}")]
    Database {
        role: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "`{role}` is a superuser or bypasses row-level security; Sovra's pools must not log in as such a role: run `ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS`"
    )]
    Privileged { role: &'static str },
}

/// The passwords of the login roles.
#[derive(Clone)]
pub struct Logins {
    pub authenticator: String,
    pub auth_admin: String,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logins { .. }")
    }
}

/// Serialises the preparation across instances sharing the database.
const LOCK_KEY: i64 = 0x736f_7672_615f_6c67; // "sovra_lg"

/// Creates the secrets table and the passwords when missing, gives both
/// roles `LOGIN` and, where `reset` asks for it or a password was just
/// made, sets their passwords. Run as the administrative user.
pub async fn prepare(admin: &Client, reset: bool) -> Result<Logins, LoginError> {
    let err = |role| move |source| LoginError::Database { role, source };
    admin
        .batch_execute(&format!(
            "BEGIN; SELECT pg_catalog.pg_advisory_xact_lock({LOCK_KEY})"
        ))
        .await
        .map_err(err(AUTHENTICATOR))?;
    let result = async {
        let missing = admin
            .query_one("SELECT to_regclass('sovra.login_secrets') IS NULL", &[])
            .await
            .map_err(err(AUTHENTICATOR))?
            .get::<_, bool>(0);
        if missing {
            admin
                .batch_execute(
                    "CREATE TABLE sovra.login_secrets (
                       role name PRIMARY KEY,
                       password text NOT NULL);
                     REVOKE ALL ON sovra.login_secrets FROM PUBLIC;
                     COMMENT ON TABLE sovra.login_secrets IS
                       'Passwords of the roles Sovra''s pools log in as; readable by the administrative user only.'",
                )
                .await
                .map_err(err(AUTHENTICATOR))?;
        }
        let mut made = false;
        for role in [AUTHENTICATOR, AUTH_ADMIN] {
            // 244 random bits from PostgreSQL's strong random source.
            let inserted = admin
                .execute(
                    "INSERT INTO sovra.login_secrets (role, password)
                     VALUES ($1, replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))
                     ON CONFLICT (role) DO NOTHING",
                    &[&role],
                )
                .await
                .map_err(err(role))?;
            made |= inserted > 0;
        }
        let cannot_login = admin
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_roles
                 WHERE rolname IN ('authenticator', 'supabase_auth_admin') AND NOT rolcanlogin",
                &[],
            )
            .await
            .map_err(err(AUTHENTICATOR))?
            .get::<_, i64>(0);
        if reset || made || cannot_login > 0 {
            // The passwords go from the table to ALTER ROLE inside the
            // server; an error names the role, never the statement.
            admin
                .batch_execute(
                    "DO $$
                     DECLARE r record;
                     BEGIN
                       FOR r IN SELECT role, password FROM sovra.login_secrets
                                WHERE role IN ('authenticator', 'supabase_auth_admin') LOOP
                         BEGIN
                           EXECUTE format('ALTER ROLE %I WITH LOGIN PASSWORD %L', r.role, r.password);
                         EXCEPTION WHEN OTHERS THEN
                           RAISE EXCEPTION 'cannot set the password of %: %', r.role, SQLERRM
                             USING ERRCODE = SQLSTATE;
                         END;
                       END LOOP;
                     END $$",
                )
                .await
                .map_err(err(AUTHENTICATOR))?;
        }
        let privileged = admin
            .query_opt(
                "SELECT rolname::text FROM pg_catalog.pg_roles
                 WHERE rolname IN ('authenticator', 'supabase_auth_admin')
                   AND (rolsuper OR rolbypassrls)
                 ORDER BY rolname LIMIT 1",
                &[],
            )
            .await
            .map_err(err(AUTHENTICATOR))?;
        if let Some(row) = privileged {
            let name: String = row.get(0);
            return Err(LoginError::Privileged {
                role: if name == AUTH_ADMIN {
                    AUTH_ADMIN
                } else {
                    AUTHENTICATOR
                },
            });
        }
        let rows = admin
            .query(
                "SELECT role::text, password FROM sovra.login_secrets
                 WHERE role IN ('authenticator', 'supabase_auth_admin')",
                &[],
            )
            .await
            .map_err(err(AUTHENTICATOR))?;
        let password = |role: &str| {
            rows.iter()
                .find(|row| row.get::<_, String>(0) == role)
                .map(|row| row.get::<_, String>(1))
                .unwrap_or_default()
        };
        Ok(Logins {
            authenticator: password(AUTHENTICATOR),
            auth_admin: password(AUTH_ADMIN),
        })
    }
    .await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    admin.batch_execute(end).await.map_err(err(AUTHENTICATOR))?;
    result
}
