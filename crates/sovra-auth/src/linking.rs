//! Manual identity linking (GoTrue's `GOTRUE_SECURITY_MANUAL_LINKING_ENABLED`,
//! Sovra's `auth.manual_linking_enabled`): a signed-in user adds an external
//! identity through the provider's redirect flow
//! (`GET /user/identities/authorize`, auth-js `linkIdentity`) or removes one
//! (`DELETE /user/identities/{id}`, auth-js `unlinkIdentity`). Off (the
//! default): both answer GoTrue's 404 `manual_linking_disabled` to a
//! signed-in caller.

use axum::response::Response;
use serde_json::{Map, Value, json};
use sovra_pg::GenericClient;
use uuid::Uuid;

use crate::db::Cached as _;
use crate::error::{AuthError, AuthResult};
use crate::{AuthService, Ctx, ok_json};

impl AuthService {
    /// `GET /user/identities/authorize?provider=…[&skip_http_redirect=true]`.
    pub(crate) async fn link_identity_authorize(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        if !self.config.manual_linking {
            return self.manual_linking_disabled(ctx).await;
        }
        let user_id = {
            let client = self.pool.get().await?;
            self.current(ctx, &client).await?.user.id
        };
        let location = self.authorize_flow(ctx, Some(user_id)).await?;
        if ctx.query("skip_http_redirect").as_deref() == Some("true") {
            Ok(ok_json(json!({"url": location})))
        } else {
            crate::external::redirect_to_location(&location)
        }
    }

    /// Links the identity (`provider`, `data.sub`) to `user_id` at the end
    /// of a linking flow: refused when it belongs to another user, its data
    /// refreshed when it is already this user's.
    pub(crate) async fn link_external_identity(
        &self,
        client: &impl GenericClient,
        user_id: Uuid,
        provider: &str,
        data: &Map<String, Value>,
    ) -> AuthResult<Uuid> {
        let sub = data.get("sub").and_then(Value::as_str).unwrap_or("");
        let data_json = Value::Object(data.clone());
        let owner = client
            .c_query_opt(
                "select user_id from auth.identities where provider = $1 and provider_id = $2",
                &[&provider, &sub],
            )
            .await?
            .map(|row| row.get::<_, Uuid>(0));
        match owner {
            Some(owner) if owner != user_id => Err(AuthError::unprocessable(
                "identity_already_exists",
                "Identity is already linked to another user",
            )),
            Some(_) => {
                client
                    .c_execute(
                        "update auth.identities set identity_data = $3, last_sign_in_at = now(), updated_at = now()
                          where provider = $1 and provider_id = $2",
                        &[&provider, &sub, &data_json],
                    )
                    .await?;
                Ok(user_id)
            }
            None => {
                client
                    .c_execute(
                        "insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at)
                         values ($1, $2, $3, $4, now(), now(), now())",
                        &[&sub, &user_id, &data_json, &provider],
                    )
                    .await?;
                // The user now has this provider; an anonymous user
                // becomes a permanent one, as GoTrue does.
                client
                    .c_execute(
                        "update auth.users set
                           raw_app_meta_data = jsonb_set(coalesce(raw_app_meta_data, '{}'), '{providers}',
                             (select coalesce(jsonb_agg(distinct i.provider), '[]'::jsonb)
                                from auth.identities i where i.user_id = $1)),
                           is_anonymous = false,
                           updated_at = now()
                         where id = $1",
                        &[&user_id],
                    )
                    .await?;
                Ok(user_id)
            }
        }
    }

    /// `DELETE /user/identities/{id}` (auth-js `unlinkIdentity`): the
    /// caller's identity `id` goes, unless it is their last one.
    pub(crate) async fn unlink_identity(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        if !self.config.manual_linking {
            return self.manual_linking_disabled(ctx).await;
        }
        self.limit(crate::limits::Bucket::Verify, &ctx.ip_key())
            .await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        let not_found = || AuthError::not_found("identity_not_found", "Identity doesn't exist");
        let id = Uuid::parse_str(id).map_err(|_| not_found())?;
        let rows = tx
            .c_query(
                "select id, provider from auth.identities where user_id = $1 for update",
                &[&current.user.id],
            )
            .await?;
        let Some(target) = rows.iter().find(|r| r.get::<_, Uuid>(0) == id) else {
            return Err(not_found());
        };
        if rows.len() <= 1 {
            return Err(AuthError::unprocessable(
                "single_identity_not_deletable",
                "User must have at least 1 identity after unlinking",
            ));
        }
        let provider: String = target.get(1);
        tx.c_execute("delete from auth.identities where id = $1", &[&id])
            .await?;
        tx.c_execute(
            "update auth.users set
               raw_app_meta_data = jsonb_set(
                 jsonb_set(coalesce(raw_app_meta_data, '{}'), '{providers}',
                   (select coalesce(jsonb_agg(distinct i.provider), '[]'::jsonb)
                      from auth.identities i where i.user_id = $1)),
                 '{provider}',
                 case when raw_app_meta_data->>'provider' = $2
                      then coalesce((select to_jsonb(i.provider) from auth.identities i
                                      where i.user_id = $1 order by i.created_at limit 1), 'null'::jsonb)
                      else coalesce(raw_app_meta_data->'provider', 'null'::jsonb) end),
               updated_at = now()
             where id = $1",
            &[&current.user.id, &provider],
        )
        .await?;
        self.audit(
            &tx,
            ctx,
            "identity_unlinked",
            Some(&current.user),
            "",
            json!({"identity_id": id, "provider": provider}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(json!({})))
    }
}
