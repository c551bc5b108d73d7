//! What the pipeline needs to know about a published table, read from this
//! database's own catalog by the table's oid (never from the bus).

use sovra_pg::tokio_postgres;
use sovra_realtime_proto::pgoutput::Relation;

use crate::change::RelInfo;

/// Type names, SQL types, the RLS flag and the key columns of a relation as
/// the change stream describes it; `None` when the table no longer exists
/// here (dropped since the change was committed).
pub(crate) async fn describe(
    client: &tokio_postgres::Client,
    rel: Relation,
) -> Result<Option<RelInfo>, tokio_postgres::Error> {
    let Some(row) = client
        .query_opt(
            "select c.relrowsecurity, quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where c.oid = $1 and c.relkind in ('r', 'p')",
            &[&rel.oid],
        )
        .await?
    else {
        return Ok(None);
    };
    let rls: bool = row.get(0);
    let table_sql: String = row.get(1);
    let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
    let rows = client
        .query(
            "select a.n, t.typname::text, format_type(t.oid, null)
             from unnest($1::oid[]) with ordinality as a(oid, n) join pg_type t on t.oid = a.oid
             order by a.n",
            &[&oids],
        )
        .await?;
    let mut type_names = vec![String::from("text"); rel.columns.len()];
    let mut sql_types = vec![String::from("text"); rel.columns.len()];
    for row in rows {
        let n: i64 = row.get(0);
        if let Some(i) = usize::try_from(n - 1)
            .ok()
            .filter(|i| *i < type_names.len())
        {
            type_names[i] = row.get(1);
            sql_types[i] = row.get(2);
        }
    }
    // Each column of the change as it exists here now: same name and type
    // (a column dropped or retyped since cannot be put back).
    let names: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
    let column_sql: Vec<Option<String>> = client
        .query(
            "select (select quote_ident(a.attname) from pg_attribute a
                     where a.attrelid = $1 and a.attname = x.name and a.attnum > 0
                       and a.atttypid = x.typ and not a.attisdropped and a.attgenerated = '')
             from unnest($2::text[], $3::oid[]) with ordinality as x(name, typ, n)
             order by x.n",
            &[&rel.oid, &names, &oids],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let identity_always: Vec<String> = client
        .query(
            "select attname::text from pg_attribute
             where attrelid = $1 and attidentity = 'a' and not attisdropped",
            &[&rel.oid],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let primary: Vec<String> = client
        .query(
            "select a.attname::text from pg_index i
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
             where i.indrelid = $1 and i.indisprimary",
            &[&rel.oid],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let keys: Vec<usize> = if primary.is_empty() {
        // Without a primary key only an index identity names rows.
        if rel.replica_identity == b'i' {
            rel.columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.key)
                .map(|(i, _)| i)
                .collect()
        } else {
            Vec::new()
        }
    } else {
        rel.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| primary.contains(&c.name))
            .map(|(i, _)| i)
            .collect()
    };
    let generated_always = rel
        .columns
        .iter()
        .map(|c| identity_always.contains(&c.name))
        .collect();
    Ok(Some(RelInfo {
        rel,
        type_names,
        sql_types,
        rls,
        keys,
        table_sql,
        column_sql: if column_sql.len() == names.len() {
            column_sql
        } else {
            vec![None; names.len()]
        },
        generated_always,
    }))
}

/// [`describe`] for a relation named by another instance: it must be a
/// table of that schema and name here, in one of the publications the
/// feed reads; `None` otherwise.
pub(crate) async fn describe_published(
    client: &tokio_postgres::Client,
    rel: Relation,
) -> Result<Option<RelInfo>, tokio_postgres::Error> {
    let published = client
        .query_opt(
            "select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where c.oid = $1 and n.nspname = $2 and c.relname = $3
               and exists (select 1 from pg_publication_tables t
                           where t.pubname = any($4) and t.schemaname = n.nspname
                             and t.tablename = c.relname)",
            &[&rel.oid, &rel.schema, &rel.name, &PUBLICATIONS.as_slice()],
        )
        .await?
        .is_some();
    if !published {
        return Ok(None);
    }
    describe(client, rel).await
}

/// The publications the feed reads.
pub(crate) const PUBLICATIONS: [&str; 2] = ["supabase_realtime", "sovra_realtime_messages"];
