//! The transaction every request that touches user data runs in: it first
//! switches to the caller's role and sets the request settings that RLS
//! policies and `auth.*()` read, all transaction-local, then the service runs
//! its statement.

use serde_json::{Map, Value};

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

/// Begins the request transaction and applies `context`. A role that does
/// not exist fails with SQLSTATE `22023` ([`crate::ErrorKind::InvalidParameterValue`]).
pub async fn begin_request<'a>(
    client: &'a mut tokio_postgres::Client,
    context: &RequestContext,
    read_only: bool,
) -> Result<tokio_postgres::Transaction<'a>, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .read_only(read_only)
        .start()
        .await?;
    let claims = Value::Object(context.claims.clone()).to_string();
    let headers = Value::Object(context.headers.clone()).to_string();
    let claim_text = |name: &str| -> String {
        match context.claims.get(name) {
            Some(Value::String(text)) => text.clone(),
            _ => String::new(),
        }
    };
    let sub = claim_text("sub");
    let email = claim_text("email");
    // Values are bound; the setting names are constants.
    tx.execute(
        "select set_config('role', $1, true),
                set_config('request.jwt.claims', $2, true),
                set_config('request.jwt.claim.role', $1, true),
                set_config('request.jwt.claim.sub', $3, true),
                set_config('request.jwt.claim.email', $4, true),
                set_config('request.method', $5, true),
                set_config('request.path', $6, true),
                set_config('request.headers', $7, true),
                set_config('request.cookies', '{}', true),
                CASE WHEN $8::text IS NOT NULL THEN set_config('search_path', $8, true) END",
        &[
            &context.role,
            &claims,
            &sub,
            &email,
            &context.method,
            &context.path,
            &headers,
            &context.search_path,
        ],
    )
    .await?;
    Ok(tx)
}
