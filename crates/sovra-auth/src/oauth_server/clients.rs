//! OAuth clients: the admin API (`/admin/oauth/clients`, as auth-js's
//! `auth.admin.oauth` calls it), dynamic registration (RFC 7591, off by
//! default), and client authentication at the token and revocation
//! endpoints. A client secret is shown once, when made; only its SHA-256
//! is stored, and a presented secret is compared by hash in constant time.

use std::time::SystemTime;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sovra_pg::tokio_postgres::Row;
use uuid::Uuid;

use super::{check_redirect_uri, field, parse_scopes};
use crate::db::Cached as _;
use crate::error::{AuthError, AuthResult};
use crate::{AuthService, Ctx, crypto, ok_json, time};

const CLIENT_COLUMNS: &str =
    "id, client_secret_hash, registration_type, redirect_uris, grant_types,
     client_name, client_uri, logo_uri, created_at, updated_at, client_type,
     token_endpoint_auth_method, scope";

const AUTH_METHODS: &[&str] = &["none", "client_secret_basic", "client_secret_post"];

/// One registered client.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    pub id: Uuid,
    secret_hash: Option<String>,
    registration_type: String,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub name: Option<String>,
    pub uri: Option<String>,
    pub logo_uri: Option<String>,
    created_at: SystemTime,
    updated_at: SystemTime,
    client_type: String,
    auth_method: String,
    /// The scopes it may ask for; `None`: all of Sovra's.
    pub scope: Option<String>,
}

fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Client {
    fn from_row(row: &Row) -> Client {
        Client {
            id: row.get("id"),
            secret_hash: row.get("client_secret_hash"),
            registration_type: row.get("registration_type"),
            redirect_uris: split_list(row.get("redirect_uris")),
            grant_types: split_list(row.get("grant_types")),
            name: row.get("client_name"),
            uri: row.get("client_uri"),
            logo_uri: row.get("logo_uri"),
            created_at: row.get("created_at"),
            updated_at: row.get("updated_at"),
            client_type: row.get("client_type"),
            auth_method: row.get("token_endpoint_auth_method"),
            scope: row.get("scope"),
        }
    }

    pub(crate) fn is_public(&self) -> bool {
        self.client_type == "public"
    }

    pub(crate) fn allows_grant(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }

    /// The scopes this client may be granted.
    pub(crate) fn allowed_scopes(&self) -> Vec<String> {
        match &self.scope {
            Some(scope) => parse_scopes(scope).unwrap_or_default(),
            None => super::SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The JSON auth-js reads (`OAuthClient`); `secret` only when just made.
    fn to_json(&self, secret: Option<&str>) -> Value {
        let mut out = json!({
            "client_id": self.id,
            "client_name": self.name.clone().unwrap_or_default(),
            "client_type": self.client_type,
            "token_endpoint_auth_method": self.auth_method,
            "registration_type": self.registration_type,
            "redirect_uris": self.redirect_uris,
            "grant_types": self.grant_types,
            "response_types": ["code"],
            "created_at": time::rfc3339(self.created_at),
            "updated_at": time::rfc3339(self.updated_at),
        });
        if let Value::Object(map) = &mut out {
            for (key, value) in [
                ("client_uri", &self.uri),
                ("logo_uri", &self.logo_uri),
                ("scope", &self.scope),
            ] {
                if let Some(value) = value.as_ref().filter(|v| !v.is_empty()) {
                    map.insert(key.to_owned(), Value::String(value.clone()));
                }
            }
            if let Some(secret) = secret {
                map.insert("client_secret".to_owned(), Value::String(secret.to_owned()));
            }
        }
        out
    }
}

/// What `POST /admin/oauth/clients` and registration take.
#[derive(Debug, Default, Deserialize)]
struct CreateParams {
    #[serde(default)]
    redirect_uris: Option<Vec<String>>,
    client_type: Option<String>,
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    response_types: Option<Vec<String>>,
    client_name: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    scope: Option<String>,
}

/// What `PUT /admin/oauth/clients/{id}` takes; absent fields stay.
#[derive(Debug, Default, Deserialize)]
struct UpdateParams {
    redirect_uris: Option<Vec<String>>,
    grant_types: Option<Vec<String>>,
    client_name: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    token_endpoint_auth_method: Option<String>,
    scope: Option<String>,
}

fn invalid(message: impl Into<String>) -> AuthError {
    AuthError::validation(message)
}

fn check_redirect_list(uris: &[String]) -> AuthResult<()> {
    if uris.is_empty() {
        return Err(invalid("redirect_uris is required"));
    }
    if uris.len() > 10 {
        return Err(invalid("redirect_uris cannot exceed 10 items"));
    }
    for uri in uris {
        check_redirect_uri(uri)
            .map_err(|e| invalid(format!("invalid redirect_uri '{uri}': {e}")))?;
    }
    Ok(())
}

fn check_grant_types(grants: &[String]) -> AuthResult<()> {
    if grants.is_empty() {
        return Err(invalid("grant_types cannot be empty"));
    }
    if grants
        .iter()
        .any(|g| g != "authorization_code" && g != "refresh_token")
    {
        return Err(invalid(
            "grant_types must only contain 'authorization_code' and/or 'refresh_token'",
        ));
    }
    Ok(())
}

fn check_uri(name: &str, value: &str) -> AuthResult<()> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 2048 {
        return Err(invalid(format!("{name} cannot exceed 2048 characters")));
    }
    let ok = (value.starts_with("https://") || value.starts_with("http://"))
        && !value.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{name} must be a valid URL")))
    }
}

fn check_name(value: &str) -> AuthResult<()> {
    if value.len() > 1024 {
        return Err(invalid("client_name cannot exceed 1024 characters"));
    }
    Ok(())
}

fn check_auth_method(method: &str) -> AuthResult<()> {
    if AUTH_METHODS.contains(&method) {
        Ok(())
    } else {
        Err(invalid(
            "token_endpoint_auth_method must be one of: [none client_secret_basic client_secret_post]",
        ))
    }
}

fn check_scope(scope: &str) -> AuthResult<()> {
    parse_scopes(scope).map(|_| ()).map_err(invalid)
}

/// A new client secret: 256 random bits, base64url.
fn new_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crypto::random_bytes(32))
}

fn not_found() -> AuthError {
    AuthError::not_found("oauth_client_not_found", "OAuth client not found")
}

fn parse_id(id: &str) -> AuthResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| invalid("invalid client_id format"))
}

/// An `invalid_client` refusal (401, with the challenge RFC 6749 asks for).
pub(crate) fn invalid_client(message: &str) -> AuthError {
    let mut err = AuthError::oauth("invalid_client", message);
    err.status = StatusCode::UNAUTHORIZED;
    err
}

impl AuthService {
    /// The live (not deleted) client `id`.
    pub(crate) async fn oauth_client(
        &self,
        client: &impl sovra_pg::GenericClient,
        id: Uuid,
    ) -> AuthResult<Option<Client>> {
        let sql = format!(
            "select {CLIENT_COLUMNS} from auth.oauth_clients where id = $1 and deleted_at is null"
        );
        Ok(client
            .c_query_opt(&sql, &[&id])
            .await?
            .map(|row| Client::from_row(&row)))
    }

    pub(crate) async fn oauth_list_clients(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let page: i64 = ctx
            .query("page")
            .filter(|p| !p.is_empty())
            .map_or(Ok(1), |p| p.parse::<i64>())
            .map_err(|_| invalid("Bad Pagination Parameters"))?
            .max(1);
        let per_page: i64 = ctx
            .query("per_page")
            .filter(|p| !p.is_empty())
            .map_or(Ok(50), |p| p.parse::<i64>())
            .map_err(|_| invalid("Bad Pagination Parameters"))?
            .clamp(1, 1000);
        let db = self.pool.get().await?;
        let total: i64 = db
            .c_query_one(
                "select count(*) from auth.oauth_clients where deleted_at is null",
                &[],
            )
            .await?
            .get(0);
        let sql = format!(
            "select {CLIENT_COLUMNS} from auth.oauth_clients where deleted_at is null
              order by created_at desc, id limit $1 offset $2"
        );
        let rows = db
            .c_query(&sql, &[&per_page, &(page - 1).saturating_mul(per_page)])
            .await?;
        let clients: Vec<Value> = rows
            .iter()
            .map(|r| Client::from_row(r).to_json(None))
            .collect();
        let mut response = ok_json(json!({"clients": clients, "aud": self.config.jwt_aud}));
        let last = ((total + per_page - 1) / per_page).max(1);
        let mut links = Vec::new();
        if page < last {
            links.push(format!(
                "</admin/oauth/clients?page={}&per_page={per_page}>; rel=\"next\"",
                page + 1
            ));
        }
        links.push(format!(
            "</admin/oauth/clients?page={last}&per_page={per_page}>; rel=\"last\""
        ));
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&total.to_string()) {
            headers.insert("x-total-count", value);
        }
        if let Ok(value) = HeaderValue::from_str(&links.join(", ")) {
            headers.insert("link", value);
        }
        Ok(response)
    }

    /// `POST /admin/oauth/clients` (`dynamic: false`, admins only) and
    /// `POST /oauth/clients/register` (`dynamic: true`, anyone, when
    /// `auth.oauth_server.dynamic_registration` is on).
    pub(crate) async fn oauth_create_client(
        &self,
        ctx: &Ctx<'_>,
        dynamic: bool,
    ) -> AuthResult<Response> {
        if dynamic {
            if !self.config.oauth_server.dynamic_registration {
                return Err(AuthError::forbidden(
                    "oauth_dynamic_client_registration_disabled",
                    "Dynamic client registration is not enabled",
                ));
            }
            self.limit(crate::limits::Bucket::SignIn, &ctx.ip_key())
                .await?;
        } else {
            self.require_admin(ctx)?;
        }
        let params: CreateParams = ctx
            .json()
            .map_err(|_| AuthError::bad_request("bad_json", "Invalid JSON body"))?;
        let redirect_uris = params.redirect_uris.unwrap_or_default();
        check_redirect_list(&redirect_uris)?;
        let grant_types = params
            .grant_types
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| vec!["authorization_code".to_owned(), "refresh_token".to_owned()]);
        check_grant_types(&grant_types)?;
        if let Some(types) = &params.response_types
            && types.iter().any(|t| t != "code")
        {
            return Err(invalid("response_types must only contain 'code'"));
        }
        let name = params.client_name.unwrap_or_default();
        check_name(&name)?;
        let uri = params.client_uri.unwrap_or_default();
        check_uri("client_uri", &uri)?;
        let logo = params.logo_uri.unwrap_or_default();
        check_uri("logo_uri", &logo)?;
        let scope = params.scope.filter(|s| !s.trim().is_empty());
        if let Some(scope) = &scope {
            check_scope(scope)?;
        }
        let requested_type = params.client_type.filter(|t| !t.is_empty());
        if let Some(t) = &requested_type
            && t != "public"
            && t != "confidential"
        {
            return Err(invalid("client_type must be 'public' or 'confidential'"));
        }
        let method = params.token_endpoint_auth_method.filter(|m| !m.is_empty());
        if let Some(m) = &method {
            check_auth_method(m)?;
        }
        // The type follows the method when only the method is given.
        let client_type = match (&requested_type, &method) {
            (Some(t), _) => t.clone(),
            (None, Some(m)) if m == "none" => "public".to_owned(),
            _ => "confidential".to_owned(),
        };
        let method = match method {
            Some(m) => m,
            None if client_type == "public" => "none".to_owned(),
            None => "client_secret_basic".to_owned(),
        };
        if (client_type == "public") != (method == "none") {
            return Err(invalid(format!(
                "token_endpoint_auth_method '{method}' is not valid for client_type '{client_type}'"
            )));
        }
        let secret = (client_type == "confidential").then(new_secret);
        let hash = secret.as_deref().map(crypto::sha256_hex);
        let id = Uuid::new_v4();
        let registration = if dynamic { "dynamic" } else { "manual" };
        let sql = format!(
            "insert into auth.oauth_clients (id, client_secret_hash, registration_type, redirect_uris,
                 grant_types, client_name, client_uri, logo_uri, client_type,
                 token_endpoint_auth_method, scope)
             values ($1, $2, $3, $4, $5, nullif($6, ''), nullif($7, ''), nullif($8, ''), $9, $10, $11)
             returning {CLIENT_COLUMNS}"
        );
        let db = self.pool.get().await?;
        let row = db
            .c_query_one(
                &sql,
                &[
                    &id,
                    &hash,
                    &registration,
                    &redirect_uris.join(","),
                    &grant_types.join(","),
                    &name,
                    &uri,
                    &logo,
                    &client_type,
                    &method,
                    &scope,
                ],
            )
            .await?;
        let client = Client::from_row(&row);
        let mut body = client.to_json(secret.as_deref());
        if dynamic && let Value::Object(map) = &mut body {
            // RFC 7591 §3.2.1.
            map.insert(
                "client_id_issued_at".to_owned(),
                json!(time::unix(client.created_at)),
            );
            if secret.is_some() {
                map.insert("client_secret_expires_at".to_owned(), json!(0));
            }
        }
        Ok((StatusCode::CREATED, axum::Json(body)).into_response())
    }

    pub(crate) async fn oauth_get_client(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = parse_id(id)?;
        let db = self.pool.get().await?;
        let client = self.oauth_client(&db, id).await?.ok_or_else(not_found)?;
        Ok(ok_json(client.to_json(None)))
    }

    pub(crate) async fn oauth_update_client(
        &self,
        ctx: &Ctx<'_>,
        id: &str,
    ) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = parse_id(id)?;
        let params: UpdateParams = ctx
            .json()
            .map_err(|_| AuthError::bad_request("bad_json", "Invalid JSON body"))?;
        if params.redirect_uris.is_none()
            && params.grant_types.is_none()
            && params.client_name.is_none()
            && params.client_uri.is_none()
            && params.logo_uri.is_none()
            && params.token_endpoint_auth_method.is_none()
            && params.scope.is_none()
        {
            return Err(invalid("No fields provided for update"));
        }
        if let Some(uris) = &params.redirect_uris {
            if uris.is_empty() {
                return Err(invalid("redirect_uris cannot be empty"));
            }
            check_redirect_list(uris)?;
        }
        if let Some(grants) = &params.grant_types {
            check_grant_types(grants)?;
        }
        if let Some(name) = &params.client_name {
            check_name(name)?;
        }
        if let Some(uri) = &params.client_uri {
            check_uri("client_uri", uri)?;
        }
        if let Some(logo) = &params.logo_uri {
            check_uri("logo_uri", logo)?;
        }
        if let Some(scope) = params.scope.as_deref().filter(|s| !s.trim().is_empty()) {
            check_scope(scope)?;
        }
        let mut db = self.pool.get().await?;
        let tx = db.transaction().await?;
        let current = self.oauth_client(&tx, id).await?.ok_or_else(not_found)?;
        if let Some(method) = &params.token_endpoint_auth_method {
            check_auth_method(method)?;
            if current.is_public() != (method == "none") {
                return Err(invalid(format!(
                    "token_endpoint_auth_method '{method}' is not valid for client_type '{}'",
                    current.client_type
                )));
            }
        }
        let sql = format!(
            "update auth.oauth_clients set
                 redirect_uris = coalesce($2, redirect_uris),
                 grant_types = coalesce($3, grant_types),
                 client_name = case when $4::text is null then client_name else nullif($4, '') end,
                 client_uri = case when $5::text is null then client_uri else nullif($5, '') end,
                 logo_uri = case when $6::text is null then logo_uri else nullif($6, '') end,
                 token_endpoint_auth_method = coalesce($7, token_endpoint_auth_method),
                 scope = case when $8::text is null then scope else nullif(btrim($8), '') end,
                 updated_at = now()
              where id = $1 and deleted_at is null
              returning {CLIENT_COLUMNS}"
        );
        let row = tx
            .c_query_one(
                &sql,
                &[
                    &id,
                    &params.redirect_uris.map(|u| u.join(",")),
                    &params.grant_types.map(|g| g.join(",")),
                    &params.client_name,
                    &params.client_uri,
                    &params.logo_uri,
                    &params.token_endpoint_auth_method,
                    &params.scope,
                ],
            )
            .await?;
        tx.commit().await?;
        Ok(ok_json(Client::from_row(&row).to_json(None)))
    }

    /// Deletes a client (softly, as GoTrue does) and ends its sessions.
    pub(crate) async fn oauth_delete_client(
        &self,
        ctx: &Ctx<'_>,
        id: &str,
    ) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = parse_id(id)?;
        let mut db = self.pool.get().await?;
        let tx = db.transaction().await?;
        let deleted = tx
            .c_execute(
                "update auth.oauth_clients set deleted_at = now(), client_secret_hash = null
                  where id = $1 and deleted_at is null",
                &[&id],
            )
            .await?;
        if deleted == 0 {
            return Err(not_found());
        }
        tx.c_execute(
            "delete from auth.sessions where oauth_client_id = $1",
            &[&id],
        )
        .await?;
        tx.c_execute(
            "delete from auth.oauth_authorizations where client_id = $1",
            &[&id],
        )
        .await?;
        tx.commit().await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    pub(crate) async fn oauth_regenerate_secret(
        &self,
        ctx: &Ctx<'_>,
        id: &str,
    ) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = parse_id(id)?;
        let db = self.pool.get().await?;
        let client = self.oauth_client(&db, id).await?.ok_or_else(not_found)?;
        if client.is_public() {
            return Err(invalid("Cannot regenerate secret for public client"));
        }
        let secret = new_secret();
        let sql = format!(
            "update auth.oauth_clients set client_secret_hash = $2, updated_at = now()
              where id = $1 and deleted_at is null returning {CLIENT_COLUMNS}"
        );
        let row = db
            .c_query_one(&sql, &[&id, &crypto::sha256_hex(&secret)])
            .await?;
        Ok(ok_json(Client::from_row(&row).to_json(Some(&secret))))
    }

    /// The client a token or revocation request authenticates as:
    /// `Authorization: Basic` (`client_secret_basic`), `client_id` and
    /// `client_secret` in the body (`client_secret_post`), or `client_id`
    /// alone for a public client (`none`, which PKCE then protects).
    pub(crate) async fn oauth_authenticate_client(
        &self,
        ctx: &Ctx<'_>,
        fields: &[(String, String)],
    ) -> AuthResult<Client> {
        let basic = ctx
            .req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .map(|(_, creds)| creds.trim().to_owned());
        let (id, secret) = match basic {
            Some(creds) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(creds)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| invalid_client("Invalid client credentials"))?;
                let (id, secret) = decoded
                    .split_once(':')
                    .ok_or_else(|| invalid_client("Invalid client credentials"))?;
                // RFC 6749 §2.3.1: both parts are form-encoded.
                (
                    crypto::percent_decode(id),
                    Some(crypto::percent_decode(secret)),
                )
            }
            None => (
                field(fields, "client_id")
                    .ok_or_else(|| invalid_client("Client authentication required"))?
                    .to_owned(),
                field(fields, "client_secret").map(str::to_owned),
            ),
        };
        if let Some(body_id) = field(fields, "client_id")
            && body_id != id
        {
            return Err(invalid_client("client_id does not match the credentials"));
        }
        let id = Uuid::parse_str(&id).map_err(|_| invalid_client("Invalid client credentials"))?;
        let db = self.pool.get().await?;
        let client = self
            .oauth_client(&db, id)
            .await?
            .ok_or_else(|| invalid_client("Invalid client credentials"))?;
        match (&client.secret_hash, secret) {
            (None, None) if client.is_public() => Ok(client),
            (Some(stored), Some(given)) if !client.is_public() => {
                if crypto::equal(stored, &crypto::sha256_hex(&given)) {
                    Ok(client)
                } else {
                    Err(invalid_client("Invalid client credentials"))
                }
            }
            (_, None) => Err(invalid_client("Client authentication required")),
            _ => Err(invalid_client("Invalid client credentials")),
        }
    }
}
