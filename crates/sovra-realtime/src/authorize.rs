//! Which changed rows each group of subscribers may see, by the table's
//! row-level security, for a whole poll batch at once.
//!
//! 1. One catalog query answers, for every (table, role) pair in the batch,
//!    whether the role may SELECT, bypasses RLS, and which SELECT policies
//!    apply to it (PostgreSQL's own privilege and membership functions).
//! 2. For the groups that need their policies evaluated, the changed rows
//!    of a table are loaded once per connection into a temporary table
//!    typed like the table, and each group's policies run over it as that
//!    group's role with its claims (the request prologue), inside a
//!    savepoint that is rolled back, so a failing policy affects only its
//!    group. Everything on one connection is sent as one pipeline and the
//!    transaction is rolled back. Up to [`WORKERS`] connections share the
//!    groups.
//!
//! Policy expressions are the table owner's SQL from the catalog; row
//! values are bound parameters.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt as _;
use serde_json::{Map, Value};
use sovra_pg::tokio_postgres::{self, types::ToSql, types::Type};
use sovra_pg::{Pool, RequestContext};
use sovra_realtime_proto::pgoutput::Datum;

use sovra_rest_plan::quote_ident;

use crate::change::Change;
use crate::principal::Principal;

/// Connections that evaluate policies at once.
const WORKERS: usize = 4;

/// The changes (by index) a group may see, or why that is unknown.
pub(crate) type Authorized = Result<Vec<usize>, String>;

/// Subscribers with the same claims, and the changes (all of one table)
/// they would receive if the policies allow.
pub(crate) struct Group {
    pub(crate) rights: Arc<str>,
    pub(crate) principal: Principal,
    pub(crate) indexes: Vec<usize>,
}

/// What one role may do on one table.
#[derive(Debug, Default)]
struct Access {
    can_select: bool,
    bypass: bool,
    permissive: Vec<String>,
    restrictive: Vec<String>,
}

impl Access {
    fn condition(&self) -> Option<String> {
        if self.permissive.is_empty() {
            return None;
        }
        let mut condition = format!("(({}))", self.permissive.join(") or ("));
        for q in &self.restrictive {
            condition.push_str(&format!(" and ({q})"));
        }
        Some(condition)
    }
}

/// The claim functions a policy may call, which return the same value for
/// every row of a statement.
const CLAIM_FUNCTIONS: [&str; 3] = ["auth.uid()", "auth.jwt()", "auth.role()"];

/// Wraps each call of a claim function in a policy expression in a scalar
/// subquery, `(select auth.uid())`, which PostgreSQL evaluates once per
/// query instead of once per row (Supabase's own advice for policies). Calls
/// inside string literals and quoted identifiers are left alone.
pub(crate) fn hoist_claims(expression: &str) -> String {
    let mut out = String::with_capacity(expression.len() + 16);
    let mut in_literal = false;
    let mut in_ident = false;
    let mut rest = expression;
    while let Some(c) = rest.chars().next() {
        if !in_literal && !in_ident {
            let boundary = out
                .chars()
                .next_back()
                .is_none_or(|p| !(p.is_alphanumeric() || p == '_' || p == '.' || p == '"'));
            if boundary && let Some(call) = CLAIM_FUNCTIONS.iter().find(|f| rest.starts_with(**f)) {
                out.push_str("(select ");
                out.push_str(call);
                out.push(')');
                rest = &rest[call.len()..];
                continue;
            }
        }
        match c {
            '\'' if !in_ident => in_literal = !in_literal,
            '"' if !in_literal => in_ident = !in_ident,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Authorises every group; the result is keyed like the input, in any
/// order.
pub(crate) async fn authorize(
    pool: &Pool,
    changes: &[Change],
    groups: Vec<Group>,
) -> Vec<(Arc<str>, Authorized)> {
    let mut out = Vec::with_capacity(groups.len());
    let groups: Vec<Group> = groups
        .into_iter()
        .filter(|g| !g.indexes.is_empty())
        .collect();
    if groups.is_empty() {
        return out;
    }
    let access = match access(pool, changes, &groups).await {
        Ok(access) => access,
        Err(err) => {
            return groups
                .into_iter()
                .map(|g| (g.rights, Err(err.clone())))
                .collect();
        }
    };
    // Per table, the groups whose policies must be evaluated.
    let mut pending: HashMap<u32, Vec<(Group, String)>> = HashMap::new();
    for group in groups {
        let rel = &changes[group.indexes[0]].rel;
        let key = (rel.rel.oid, group.principal.role.clone());
        let Some(rights) = access.get(&key) else {
            out.push((group.rights, Ok(Vec::new())));
            continue;
        };
        if !rights.can_select {
            out.push((group.rights, Ok(Vec::new())));
        } else if !rel.rls || rights.bypass {
            out.push((group.rights, Ok(group.indexes)));
        } else if let Some(condition) = rights.condition() {
            pending
                .entry(rel.rel.oid)
                .or_default()
                .push((group, condition));
        } else {
            out.push((group.rights, Ok(Vec::new())));
        }
    }
    // Split each table's groups into at most WORKERS tasks.
    let mut tasks: Vec<Vec<(Group, String)>> = Vec::new();
    for (_, groups) in pending {
        let n = groups.len().clamp(1, WORKERS);
        let mut split: Vec<Vec<(Group, String)>> = (0..n).map(|_| Vec::new()).collect();
        for (i, group) in groups.into_iter().enumerate() {
            split[i % n].push(group);
        }
        tasks.extend(split);
    }
    let results: Vec<Vec<(Arc<str>, Authorized)>> = futures_util::stream::iter(tasks)
        .map(|task| evaluate(pool, changes, task))
        .buffer_unordered(WORKERS)
        .collect()
        .await;
    out.extend(results.into_iter().flatten());
    out
}

/// Privilege, RLS bypass and applicable SELECT policies of every (table,
/// role) pair of the groups, in one query.
async fn access(
    pool: &Pool,
    changes: &[Change],
    groups: &[Group],
) -> Result<HashMap<(u32, String), Access>, String> {
    let mut pairs: Vec<(u32, String)> = groups
        .iter()
        .map(|g| (changes[g.indexes[0]].rel.rel.oid, g.principal.role.clone()))
        .collect();
    pairs.sort();
    pairs.dedup();
    let oids: Vec<u32> = pairs.iter().map(|p| p.0).collect();
    let roles: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
    let client = pool.get().await.map_err(|err| err.to_string())?;
    // A role that does not exist may do nothing (the CASE keeps the
    // privilege functions from raising for it).
    let rows = client
        .query_typed(
            "select x.oid, x.role,
                    case when r.oid is null then false
                         else has_table_privilege(r.oid, x.oid, 'SELECT') end,
                    coalesce(r.rolbypassrls, false),
                    case when r.oid is null then '[]'::json else coalesce(
                      (select json_agg(json_build_array(p.polpermissive,
                                                        coalesce(pg_get_expr(p.polqual, p.polrelid), 'true')))
                       from pg_policy p
                       where p.polrelid = x.oid and p.polcmd in ('r', '*')
                         and (0::oid = any(p.polroles)
                              or exists (select 1 from unnest(p.polroles) pr
                                         where pg_has_role(r.oid, pr, 'member')))),
                      '[]'::json) end
             from unnest($1::oid[], $2::text[]) as x(oid, role)
             left join pg_roles r on r.rolname = x.role",
            &[(&oids, Type::OID_ARRAY), (&roles, Type::TEXT_ARRAY)],
        )
        .await
        .map_err(|err| err.to_string())?;
    let mut access = HashMap::new();
    for row in rows {
        let oid: u32 = row.get(0);
        let role: String = row.get(1);
        let mut rights = Access {
            can_select: row.get(2),
            bypass: row.get(3),
            ..Access::default()
        };
        let policies: Value = row.get(4);
        for policy in policies.as_array().into_iter().flatten() {
            let qual = hoist_claims(policy[1].as_str().unwrap_or("false"));
            if policy[0].as_bool().unwrap_or(false) {
                rights.permissive.push(qual);
            } else {
                rights.restrictive.push(qual);
            }
        }
        access.insert((oid, role), rights);
    }
    Ok(access)
}

type Step<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Vec<i64>>, tokio_postgres::Error>> + Send + 'a>>;

/// Evaluates the policies of several groups of one table on one
/// connection, in one pipeline.
async fn evaluate(
    pool: &Pool,
    changes: &[Change],
    task: Vec<(Group, String)>,
) -> Vec<(Arc<str>, Authorized)> {
    let fail = |task: Vec<(Group, String)>, err: String| {
        task.into_iter()
            .map(|(g, _)| (g.rights, Err(err.clone())))
            .collect::<Vec<_>>()
    };
    let Some((first, _)) = task.first() else {
        return Vec::new();
    };
    let rel = changes[first.indexes[0]].rel.clone();
    // The rows any group of the task needs, each once: the new row (the
    // old one for deletes, which needs REPLICA IDENTITY FULL).
    let mut needed: Vec<usize> = task
        .iter()
        .flat_map(|(g, _)| g.indexes.iter().copied())
        .collect();
    needed.sort_unstable();
    needed.dedup();
    let needed_count = needed.len();
    let n = rel.rel.columns.len();
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(needed.len()); n];
    let mut ordinals: Vec<i64> = Vec::with_capacity(needed.len());
    for index in needed {
        let change = &changes[index];
        let tuple = if change.kind == "DELETE" {
            if rel.rel.replica_identity != b'f' {
                continue;
            }
            change.old.as_ref()
        } else {
            change.new.as_ref()
        };
        let Some(tuple) = tuple else { continue };
        for (i, column) in columns.iter_mut().enumerate() {
            let value = match tuple.get(i) {
                Some(Datum::Text(t)) => Some(t.clone()),
                // An unchanged TOASTed value: from the old row if sent.
                Some(Datum::Unchanged) => match change.old.as_ref().and_then(|o| o.get(i)) {
                    Some(Datum::Text(t)) => Some(t.clone()),
                    _ => None,
                },
                _ => None,
            };
            column.push(value);
        }
        ordinals.push(index as i64);
    }
    if ordinals.is_empty() {
        return task
            .into_iter()
            .map(|(g, _)| (g.rights, Ok(Vec::new())))
            .collect();
    }
    let client = match pool.get().await {
        Ok(client) => client,
        Err(err) => return fail(task, err.to_string()),
    };
    let table = "pg_temp.__sovra_rt_rows";
    let mut defs = vec!["__sovra_i int8".to_owned()];
    let mut casts = vec!["x.__sovra_i".to_owned()];
    let mut aliases = vec!["__sovra_i".to_owned()];
    for (i, column) in rel.rel.columns.iter().enumerate() {
        defs.push(format!(
            "{} {}",
            quote_ident(&column.name),
            rel.sql_types[i]
        ));
        casts.push(format!("x.__sovra_c{i}::{}", rel.sql_types[i]));
        aliases.push(format!("__sovra_c{i}"));
    }
    let create = format!(
        "begin; create temp table __sovra_rt_rows ({}) on commit drop; grant select on {table} to public",
        defs.join(", ")
    );
    let arrays: Vec<String> = (0..=n)
        .map(|i| {
            if i == 0 {
                "$1::int8[]".to_owned()
            } else {
                format!("${}::text[]", i + 1)
            }
        })
        .collect();
    let insert = format!(
        "insert into {table} select {} from unnest({}) as x({})",
        casts.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    );
    let mut insert_params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&ordinals, Type::INT8_ARRAY)];
    for column in &columns {
        insert_params.push((column as &(dyn ToSql + Sync), Type::TEXT_ARRAY));
    }
    let contexts: Vec<[Option<String>; 8]> = task
        .iter()
        .map(|(g, _)| {
            sovra_pg::request::prologue_params(&RequestContext {
                role: g.principal.role.clone(),
                claims: g.principal.claims.clone(),
                method: "GET".to_owned(),
                path: "/realtime/v1".to_owned(),
                headers: Map::new(),
                search_path: None,
            })
        })
        .collect();
    let typed_contexts: Vec<Vec<(&(dyn ToSql + Sync), Type)>> = contexts
        .iter()
        .map(|params| {
            params
                .iter()
                .map(|p| (p as &(dyn ToSql + Sync), Type::TEXT))
                .collect()
        })
        .collect();
    let wanted: Vec<Vec<i64>> = task
        .iter()
        .map(|(g, _)| g.indexes.iter().map(|i| *i as i64).collect())
        .collect();
    // A group that wants every loaded row reads the table whole; others
    // join their rows (a hash join, not a scan of the array per row).
    let queries: Vec<String> = task
        .iter()
        .map(|(group, condition)| {
            if group.indexes.len() >= needed_count {
                format!(
                    "select __sovra_i from {table} where $1::int8[] is not null and coalesce(({condition}), false)"
                )
            } else {
                format!(
                    "select __sovra_i from {table} where __sovra_i in (select unnest($1::int8[])) and coalesce(({condition}), false)"
                )
            }
        })
        .collect();
    let wanted_params: Vec<[(&(dyn ToSql + Sync), Type); 1]> = wanted
        .iter()
        .map(|w| [(w as &(dyn ToSql + Sync), Type::INT8_ARRAY)])
        .collect();
    // The whole conversation as one pipeline, in order.
    let db: &tokio_postgres::Client = &client;
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(4 + task.len() * 4);
    steps.push(Box::pin(async move {
        db.batch_execute(&create).await.map(|()| None)
    }));
    let insert_ref = &insert;
    let insert_params_ref = &insert_params;
    steps.push(Box::pin(async move {
        db.query_typed(insert_ref, insert_params_ref)
            .await
            .map(|_| None)
    }));
    for (i, query) in queries.iter().enumerate() {
        let prologue = &typed_contexts[i];
        let params = &wanted_params[i];
        steps.push(Box::pin(async move {
            db.batch_execute("savepoint sovra_rt").await.map(|()| None)
        }));
        steps.push(Box::pin(async move {
            db.query_typed(sovra_pg::request::PROLOGUE_SQL, prologue)
                .await
                .map(|_| None)
        }));
        steps.push(Box::pin(async move {
            let rows = db.query_typed(query, params).await?;
            Ok(Some(rows.iter().map(|r| r.get::<_, i64>(0)).collect()))
        }));
        steps.push(Box::pin(async move {
            db.batch_execute("rollback to savepoint sovra_rt")
                .await
                .map(|()| None)
        }));
    }
    steps.push(Box::pin(async move {
        db.batch_execute("rollback").await.map(|()| None)
    }));
    let results = futures_util::future::join_all(steps).await;
    // Steps: create, insert, then four per group (the third answers).
    let setup = results[0].as_ref().err().or(results[1].as_ref().err());
    let mut out = Vec::with_capacity(task.len());
    for (i, (group, _)) in task.into_iter().enumerate() {
        let result = match (setup, &results[2 + i * 4 + 1], &results[2 + i * 4 + 2]) {
            (Some(err), _, _) | (None, Err(err), _) | (None, Ok(_), Err(err)) => {
                Err(err.to_string())
            }
            (None, Ok(_), Ok(rows)) => Ok(rows
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| usize::try_from(i).ok())
                .collect()),
        };
        out.push((group.rights, result));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::hoist_claims;

    #[test]
    fn claim_calls_are_hoisted_outside_literals_only() {
        assert_eq!(
            hoist_claims("(owner_id = auth.uid())"),
            "(owner_id = (select auth.uid()))"
        );
        assert_eq!(
            hoist_claims("((auth.jwt() ->> 'team'::text) = team) AND (auth.role() = 'x'::text)"),
            "(((select auth.jwt()) ->> 'team'::text) = team) AND ((select auth.role()) = 'x'::text)"
        );
        for untouched in [
            "(body <> 'auth.uid()'::text)",
            "(body <> 'it''s auth.uid()'::text)",
            "(\"auth.uid()\" = 1)",
            "(myauth.uid() = owner)",
            "(x.auth.uid() = owner)",
            "true",
        ] {
            assert_eq!(hoist_claims(untouched), untouched);
        }
        assert_eq!(
            hoist_claims("('a''b' = c) or (d = auth.uid())"),
            "('a''b' = c) or (d = (select auth.uid()))"
        );
    }
}
