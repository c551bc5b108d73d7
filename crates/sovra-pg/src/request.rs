//! The transaction every request that touches user data runs in: it first
//! switches to the caller's role and sets the request settings that RLS
//! policies and `auth.*()` read, all transaction-local, then the service runs
//! its statement.

use serde_json::{Map, Value};
use tokio_postgres::types::{ToSql, Type};

/// Who is asking and how, as the database should see it.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// Database role to switch to (`anon`, `authenticated`, `service_role`,
    /// or any role a token names).
    pub role: String,
    /// The verified JWT claims; always contains `role`.
    pub claims: Map<String, Value>,
    pub method: String,
    /// The path as the service sees it (after its prefix).
    pub path: String,
    /// Request headers with lower-cased names; secrets already removed.
    pub headers: Map<String, Value>,
    /// `search_path` for the transaction (already quoted), e.g.
    /// `"public", "extensions"`; `None` keeps the role's default.
    pub search_path: Option<String>,
}

/// [`ROLE_SETTING_NAMES`] as an SQL list, for the statements that filter
/// on them.
macro_rules! role_setting_names {
    () => {
        "('statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout', 'work_mem', 'default_text_search_config')"
    };
}

/// The role settings a request transaction applies for the role it
/// switches to (see [`PROLOGUE_SQL`]), in this order (the list of
/// `role_setting_names!`).
pub const ROLE_SETTING_NAMES: [&str; 5] = [
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "work_mem",
    "default_text_search_config",
];

/// Reads the [`ROLE_SETTING_NAMES`] settings of every role for the current
/// database: rows of role name, setting name and value, global ones first,
/// so that a database-specific value read later replaces a global one (as
/// PostgreSQL applies them at login).
pub const ROLE_SETTINGS_SQL: &str = concat!(
    "select r.rolname::text, split_part(s.setting, '=', 1),
       substring(s.setting from position('=' in s.setting) + 1)
from pg_catalog.pg_db_role_setting d
join pg_catalog.pg_roles r on r.oid = d.setrole
cross join lateral unnest(d.setconfig) as s(setting)
where d.setdatabase in (0, (select oid from pg_catalog.pg_database where datname = current_database()))
  and split_part(s.setting, '=', 1) in ",
    role_setting_names!(),
    "
order by d.setdatabase"
);

/// The request settings of [`PROLOGUE_SQL`] (parameters 1 to 8), as one
/// select list: what a service that knows the role's settings already
/// (REST, from its schema cache) runs without the lookup.
macro_rules! request_settings {
    () => {
        "set_config('role', $1, true),
        set_config('request.jwt.claims', $2, true),
        set_config('request.jwt.claim.role', $1, true),
        set_config('request.jwt.claim.sub', $3, true),
        set_config('request.jwt.claim.email', $4, true),
        set_config('request.method', $5, true),
        set_config('request.path', $6, true),
        set_config('request.headers', $7, true),
        set_config('request.cookies', '{}', true),
        CASE WHEN $8::text IS NOT NULL THEN set_config('search_path', $8, true) END"
    };
}

/// See [`request_settings`]; its eight parameters come from
/// [`prologue_params`].
pub const REQUEST_SETTINGS_SQL: &str = request_settings!();

/// The statement that applies a [`RequestContext`]; its eight parameters
/// come from [`prologue_params`], all of type `text`. Setting names are
/// constants; every value is bound.
///
/// `SET ROLE` does not apply a role's own settings (`ALTER ROLE anon SET
/// statement_timeout = '3s'`), so the prologue first applies the role's
/// timeouts and a few other safe settings ([`ROLE_SETTING_NAMES`])
/// transaction-locally, database-specific ones last, as PostgREST does.
pub const PROLOGUE_SQL: &str = concat!(
    "select (select count(*) from (
          select set_config(split_part(setting, '=', 1),
                            substring(setting from position('=' in setting) + 1), true)
          from (select s.setting
                from pg_catalog.pg_db_role_setting d, unnest(d.setconfig) as s(setting)
                where d.setrole = (select oid from pg_catalog.pg_roles where rolname = $1)
                  and d.setdatabase in (0, (select oid from pg_catalog.pg_database
                                             where datname = current_database()))
                  and split_part(s.setting, '=', 1) in ",
    role_setting_names!(),
    "
                order by d.setdatabase) role_settings) applied),
        ",
    request_settings!()
);

/// Clears what an earlier user of a pooled connection may have left in the
/// session, outside any transaction: settings made with
/// `set_config(…, false)` or `SET` (every `request.*` placeholder, the
/// legacy `request.jwt.claim` and `request.jwt.claim.*` included, `role`,
/// `timezone`, `search_path`), open cursors, `LISTEN`s, session advisory
/// locks, temporary tables and sequence state. Prepared statements stay,
/// so the driver's statement cache keeps working. Send it (pipelined, so
/// it costs no round trip of its own) before the request transaction
/// begins.
///
/// Every user of a pooled connection resets it before its own transaction
/// (rather than after, which a cancelled request would skip). It costs the
/// server about 30 to 60 µs of CPU per request (pgbench, one client).
pub const RESET_SQL: &str = "CLOSE ALL; RESET ROLE; RESET ALL; UNLISTEN *; \
     SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

/// The `FROM` clause that makes a prologue statement ([`PROLOGUE_SQL`], with
/// whatever a service appends to its select list) reset the session first:
/// `sovra.reset_session()` (migration 0013) does what [`RESET_SQL`] does, in
/// one prepared call inside the request transaction instead of seven
/// statements parsed and run as transactions of their own. The function
/// runs in the scan below the select list, so every `set_config` of the
/// prologue comes after it. Transaction-local, it still works for the
/// request whose transaction fails: that request's statements ran after it.
///
/// It runs as the session's current role: normally the login role's
/// (`authenticator`, which may execute it), but a role that an earlier
/// request's code set for the session (`set_config('role', …, false)`) may
/// not. Then the prologue fails ([`reset_refused`]) and the caller runs
/// [`RESET_SQL`] first and tries once more.
pub const RESET_FROM: &str = "from sovra.reset_session() as sovra_reset_session";

/// Whether a prologue with [`RESET_FROM`] failed in a way that [`RESET_SQL`]
/// first may cure: the current role may not execute the reset function
/// (`42501`), or cannot see it (`42883`, `3F000`). A role that the session
/// may not switch to fails with `42501` again after the reset, as it should.
pub fn reset_refused(err: &tokio_postgres::Error) -> bool {
    err.code()
        .is_some_and(|code| matches!(code.code(), "42501" | "42883" | "3F000"))
}

/// The parameters of [`PROLOGUE_SQL`] for `context`.
pub fn prologue_params(context: &RequestContext) -> [Option<String>; 8] {
    prologue_params_of(&PrologueRef {
        role: &context.role,
        claims: &context.claims,
        method: &context.method,
        path: &context.path,
        headers: &context.headers,
        search_path: context.search_path.as_deref(),
    })
}

/// A [`RequestContext`] borrowed from the caller's request, for services
/// that have its parts already (REST): no claims or headers cloned.
pub struct PrologueRef<'a> {
    pub role: &'a str,
    pub claims: &'a Map<String, Value>,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a Map<String, Value>,
    pub search_path: Option<&'a str>,
}

/// The parameters of [`PROLOGUE_SQL`] for `context`.
pub fn prologue_params_of(context: &PrologueRef<'_>) -> [Option<String>; 8] {
    let claim_text = |name: &str| -> String {
        match context.claims.get(name) {
            Some(Value::String(text)) => text.clone(),
            _ => String::new(),
        }
    };
    // A map of JSON values always serializes.
    let json = |map: &Map<String, Value>| serde_json::to_string(map).unwrap_or_default();
    [
        Some(context.role.to_owned()),
        Some(json(context.claims)),
        Some(claim_text("sub")),
        Some(claim_text("email")),
        Some(context.method.to_owned()),
        Some(context.path.to_owned()),
        Some(json(context.headers)),
        context.search_path.map(str::to_owned),
    ]
}

/// Resets the session ([`RESET_SQL`]), begins the request transaction and
/// applies `context`. A role that does
/// not exist fails with SQLSTATE `22023` ([`crate::ErrorKind::InvalidParameterValue`]).
pub async fn begin_request<'a>(
    client: &'a mut tokio_postgres::Client,
    context: &RequestContext,
    read_only: bool,
) -> Result<tokio_postgres::Transaction<'a>, tokio_postgres::Error> {
    client.batch_execute(RESET_SQL).await?;
    let tx = client
        .build_transaction()
        .read_only(read_only)
        .start()
        .await?;
    let params = prologue_params(context);
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
        .iter()
        .map(|p| (p as &(dyn ToSql + Sync), Type::TEXT))
        .collect();
    tx.query_typed(PROLOGUE_SQL, &typed).await?;
    Ok(tx)
}

#[cfg(test)]
mod role_setting_names_tests {
    #[test]
    fn the_sql_list_is_the_names() {
        let quoted: Vec<String> = super::ROLE_SETTING_NAMES
            .iter()
            .map(|name| format!("'{name}'"))
            .collect();
        assert_eq!(role_setting_names!(), format!("({})", quoted.join(", ")));
    }
}
