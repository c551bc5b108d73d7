//! Vector buckets at `/storage/v1/vector/*`: the API of storage-js's
//! `storage.vectors` (AWS S3 Vectors' operations, each a `POST` with a
//! camelCase JSON body) on pgvector.
//!
//! Buckets and indexes are rows of `storage.vector_buckets` and
//! `storage.vector_indexes`; vectors are rows of `storage.vectors`,
//! partitioned by index, each partition with an HNSW index for its
//! dimension and metric (made by a trigger, migration 0017). Every
//! statement runs in a transaction as the caller, so RLS decides: the
//! service role may do everything, `anon` and `authenticated` what policies
//! on those three tables allow. Pure parts: [`model`] (names, limits,
//! fields, tokens, pgvector's binary format) and [`filter`] (the metadata
//! filter language, rendered with bound values only).

pub mod filter;
pub mod model;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sovra_pg::tokio_postgres::Row;
use sovra_pg::tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{Ctx, Principal, StorageError};
use filter::{Filter, Param};
use model::{Body as Fields, PgVector, invalid, not_found};

/// `storage.operation` for policies, and the search settings: HNSW's
/// candidate list, iterative scans (so that filters and policies that
/// drop candidates still fill `topK`, within pgvector's scan bounds) and
/// custom plans (so only the index's partition is planned).
const SETTINGS_SQL: &str = "select set_config('storage.operation', $1, true), \
     set_config('hnsw.ef_search', $2, true), \
     set_config('hnsw.iterative_scan', 'strict_order', true), \
     set_config('plan_cache_mode', 'force_custom_plan', true)";

/// HNSW's `ef_search` for queries (at least `topK`); see bench/RESULTS.md.
pub const EF_SEARCH: i64 = 100;

/// The index, seen by the caller, that a data statement starts from; the
/// statement's first column counts it (0: gone or not visible).
const IDX: &str = "with idx as (select id from storage.vector_indexes where id = $1)";

/// Most indexes remembered per tenant.
const CACHE_MAX: usize = 4096;

/// What the data statements need of an index.
#[derive(Clone, Debug)]
pub(crate) struct IndexMeta {
    id: Uuid,
    dimension: i32,
    metric: String,
    non_filterable: Vec<String>,
}

/// Indexes by (bucket, name). An entry only saves the lookup: every data
/// statement checks, as the caller, that the index with that id is still
/// there, and a miss forgets the entry and looks again.
#[derive(Debug, Default)]
pub(crate) struct IndexCache(Mutex<HashMap<(String, String), Arc<IndexMeta>>>);

impl IndexCache {
    fn get(&self, bucket: &str, index: &str) -> Option<Arc<IndexMeta>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(bucket.to_owned(), index.to_owned())).cloned()
    }

    fn put(&self, bucket: &str, index: &str, meta: Arc<IndexMeta>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_MAX {
            map.clear();
        }
        map.insert((bucket.to_owned(), index.to_owned()), meta);
    }

    fn forget(&self, bucket: &str, index: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(bucket.to_owned(), index.to_owned()));
    }
}

pub(crate) async fn route(
    ctx: &Ctx<'_>,
    operation: &str,
    body: Body,
) -> Result<Response, StorageError> {
    // Supabase's vector routes send every error with its own status.
    operate(ctx, operation, body).await.map_err(|mut err| {
        err.http.get_or_insert(err.status);
        err
    })
}

async fn operate(ctx: &Ctx<'_>, operation: &str, body: Body) -> Result<Response, StorageError> {
    if *ctx.method != Method::POST {
        return Err(crate::not_allowed());
    }
    let who = ctx.caller()?;
    let limit = if operation == "PutVectors" {
        model::MAX_PUT_BODY
    } else {
        model::MAX_BODY
    };
    let declared = ctx
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(model::too_large(limit));
    }
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(err) => {
            // A chunked body over the limit (http-body-util's
            // `LengthLimitError`, "length limit exceeded").
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            let mut too_large = false;
            while let Some(e) = source {
                too_large |= e.to_string().contains("length limit");
                source = e.source();
            }
            return Err(if too_large {
                model::too_large(limit)
            } else {
                invalid("The request body broke off")
            });
        }
    };
    let fields = Fields::parse(&bytes)?;
    let v = Vectors { ctx, who };
    match operation {
        "CreateVectorBucket" => v.create_bucket(&fields).await,
        "GetVectorBucket" => v.get_bucket(&fields).await,
        "ListVectorBuckets" => v.list_buckets(&fields).await,
        "DeleteVectorBucket" => v.delete_bucket(&fields).await,
        "CreateIndex" => v.create_index(&fields).await,
        "GetIndex" => v.get_index(&fields).await,
        "ListIndexes" => v.list_indexes(&fields).await,
        "DeleteIndex" => v.delete_index(&fields).await,
        "PutVectors" => v.put_vectors(&fields).await,
        "GetVectors" => v.get_vectors(&fields).await,
        "ListVectors" => v.list_vectors(&fields).await,
        "DeleteVectors" => v.delete_vectors(&fields).await,
        "QueryVectors" => v.query_vectors(&fields).await,
        _ => Err(StorageError::route_not_found()),
    }
}

fn empty() -> Response {
    StatusCode::OK.into_response()
}

fn ok(body: Value) -> Response {
    axum::Json(body).into_response()
}

/// A failed statement: the database's error, or no connection.
struct Failure(Option<sovra_pg::tokio_postgres::Error>);

/// Maps a database error of a vector statement.
fn db_error(failure: &Failure) -> StorageError {
    use sovra_pg::tokio_postgres::error::SqlState;
    let Some(err) = &failure.0 else {
        return StorageError::unavailable();
    };
    if let Some(db) = err.as_db_error() {
        let code = db.code();
        if *code == SqlState::FEATURE_NOT_SUPPORTED && db.hint() == Some("vector_store")
            || *code == SqlState::UNDEFINED_OBJECT
            || *code == SqlState::UNDEFINED_TABLE
        {
            return model::not_enabled();
        }
        if *code == SqlState::DATA_EXCEPTION {
            return invalid(db.message().to_owned());
        }
    }
    crate::error::from_db(err)
}

fn is_kind(failure: &Failure, state: &sovra_pg::tokio_postgres::error::SqlState) -> bool {
    failure.0.as_ref().and_then(|err| err.code()) == Some(state)
}

struct Vectors<'a, 'b> {
    ctx: &'a Ctx<'b>,
    who: Principal,
}

type Params<'p> = Vec<&'p (dyn ToSql + Sync)>;

impl Vectors<'_, '_> {
    /// Runs `sql` in a transaction as the caller (see `Ctx::run`: one
    /// pipelined round trip), with this module's settings.
    async fn run_raw(
        &self,
        op: &str,
        ef_search: i64,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        commit: bool,
    ) -> Result<Vec<Row>, Failure> {
        use sovra_pg::tokio_postgres::types::Type;
        let client = match self.ctx.service.pool.get().await {
            Ok(client) => client,
            Err(err) => {
                tracing::error!(error = %err, "no database connection for vector storage");
                return Err(Failure(None));
            }
        };
        let wrapper: &sovra_pg::ClientWrapper = &client;
        let context = self.ctx.context(&self.who);
        let prologue = sovra_pg::prologue_params(&context);
        let prologue_values: Vec<&(dyn ToSql + Sync)> =
            prologue.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let (prologue_statement, settings_statement, statement) = tokio::try_join!(
            wrapper.prepare_typed_cached(sovra_pg::PROLOGUE_SQL, &[Type::TEXT; 8]),
            wrapper.prepare_typed_cached(SETTINGS_SQL, &[Type::TEXT; 2]),
            wrapper.prepare_cached(sql),
        )
        .map_err(|err| Failure(Some(err)))?;
        let ef = ef_search.to_string();
        let settings: [&(dyn ToSql + Sync); 2] = [&op, &ef];
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        let (reset, begun, applied, set, result, ended) = tokio::join!(
            client.batch_execute(sovra_pg::RESET_SQL),
            client.batch_execute("BEGIN"),
            client.query(&prologue_statement, &prologue_values),
            client.query(&settings_statement, &settings),
            client.query(&statement, params),
            client.batch_execute(end),
        );
        match (reset, begun, applied, set, result, ended) {
            (Ok(()), Ok(()), Ok(_), Ok(_), Ok(rows), Ok(())) => Ok(rows),
            (reset, begun, applied, set, result, ended) => {
                let in_failed =
                    sovra_pg::tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION;
                let errors = [
                    reset.err(),
                    begun.err(),
                    applied.err(),
                    set.err(),
                    result.err(),
                    ended.err(),
                ];
                if !client.is_closed() {
                    let _ = client.batch_execute("ROLLBACK").await;
                }
                let mut first = None;
                for err in errors.into_iter().flatten() {
                    if err.code() != Some(&in_failed) {
                        return Err(Failure(Some(err)));
                    }
                    first.get_or_insert(err);
                }
                Err(Failure(first))
            }
        }
    }

    async fn run(
        &self,
        op: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        commit: bool,
    ) -> Result<Vec<Row>, StorageError> {
        self.run_raw(op, EF_SEARCH, sql, params, commit)
            .await
            .map_err(|err| db_error(&err))
    }

    fn cache(&self) -> &IndexCache {
        &self.ctx.service.vector_indexes
    }

    /// The index, from the cache or looked up as the caller.
    async fn index(
        &self,
        bucket: &str,
        name: &str,
        fresh: bool,
    ) -> Result<Arc<IndexMeta>, StorageError> {
        if !fresh && let Some(meta) = self.cache().get(bucket, name) {
            return Ok(meta);
        }
        let rows = self
            .run(
                "vector.index.lookup",
                "select exists (select 1 from storage.vector_buckets where id = $1), \
                 i.id, i.dimension, i.distance_metric, i.non_filterable_keys \
                 from (values (1)) as one(x) \
                 left join storage.vector_indexes i on i.bucket_id = $1 and i.name = $2",
                &[&bucket, &name],
                false,
            )
            .await?;
        let row = rows.first().ok_or_else(StorageError::internal)?;
        if !row.get::<_, bool>(0) {
            return Err(not_found("Vector bucket", bucket));
        }
        let Some(id) = row.get::<_, Option<Uuid>>(1) else {
            self.cache().forget(bucket, name);
            return Err(not_found("Vector index", name));
        };
        let meta = Arc::new(IndexMeta {
            id,
            dimension: row.get(2),
            metric: row.get(3),
            non_filterable: row.get(4),
        });
        self.cache().put(bucket, name, meta.clone());
        Ok(meta)
    }

    /// Runs a data statement (first column: whether the index is there)
    /// against the index, looking it up again once if it has changed.
    async fn with_index<F, Fut, T>(
        &self,
        bucket: &str,
        name: &str,
        mut op: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut(Arc<IndexMeta>) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, StorageError>>,
    {
        let meta = self.index(bucket, name, false).await?;
        if let Some(result) = op(meta).await? {
            return Ok(result);
        }
        self.cache().forget(bucket, name);
        let meta = self.index(bucket, name, true).await?;
        match op(meta).await? {
            Some(result) => Ok(result),
            None => {
                self.cache().forget(bucket, name);
                Err(not_found("Vector index", name))
            }
        }
    }

    async fn create_bucket(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        self.run_raw(
            "vector.bucket.create",
            EF_SEARCH,
            "insert into storage.vector_buckets (id) values ($1)",
            &[&bucket],
            true,
        )
        .await
        .map_err(|err| {
            if is_kind(
                &err,
                &sovra_pg::tokio_postgres::error::SqlState::UNIQUE_VIOLATION,
            ) {
                model::conflict("Vector bucket", &bucket)
            } else {
                db_error(&err)
            }
        })?;
        Ok(empty())
    }

    async fn get_bucket(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let rows = self
            .run(
                "vector.bucket.get",
                "select id, extract(epoch from created_at)::int8 from storage.vector_buckets where id = $1",
                &[&bucket],
                false,
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| not_found("Vector bucket", &bucket))?;
        Ok(ok(json!({"vectorBucket": {
            "vectorBucketName": row.get::<_, String>(0),
            "creationTime": row.get::<_, i64>(1),
        }})))
    }

    async fn list_buckets(&self, f: &Fields) -> Result<Response, StorageError> {
        let prefix = f.string("prefix")?.unwrap_or("").to_owned();
        let max = f
            .int("maxResults", 1, model::MAX_LIST_NAMES)?
            .unwrap_or(model::MAX_LIST_NAMES);
        let after = f.token()?.unwrap_or_default();
        let rows = self
            .run(
                "vector.bucket.list",
                "select id, extract(epoch from created_at)::int8 from storage.vector_buckets \
                 where id > $1 and starts_with(id, $2) order by id limit $3",
                &[&after, &prefix, &(max + 1)],
                false,
            )
            .await?;
        let (page, next) = page(&rows, max);
        let buckets: Vec<Value> = page
            .iter()
            .map(|row| json!({"vectorBucketName": row.get::<_, String>(0), "creationTime": row.get::<_, i64>(1)}))
            .collect();
        let mut body = json!({"vectorBuckets": buckets});
        if let Some(last) = next {
            body["nextToken"] = json!(model::encode_token(&last.get::<_, String>(0)));
        }
        Ok(ok(body))
    }

    async fn delete_bucket(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let rows = self
            .run_raw(
                "vector.bucket.delete",
                EF_SEARCH,
                "delete from storage.vector_buckets where id = $1 returning id",
                &[&bucket],
                true,
            )
            .await
            .map_err(|err| {
                if is_kind(
                    &err,
                    &sovra_pg::tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION,
                ) {
                    model::bucket_not_empty(&bucket)
                } else {
                    db_error(&err)
                }
            })?;
        if rows.is_empty() {
            return Err(not_found("Vector bucket", &bucket));
        }
        Ok(empty())
    }

    async fn create_index(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let index = f.index()?;
        match f.required_string("dataType")? {
            "float32" => {}
            other => {
                return Err(invalid(format!(
                    "dataType {other} is not supported (float32 is)"
                )));
            }
        }
        let dimension = f
            .int("dimension", 1, model::MAX_DIMENSION)?
            .ok_or_else(|| model::missing("dimension"))?;
        let metric = f.required_string("distanceMetric")?;
        if metric != "cosine" && metric != "euclidean" {
            return Err(invalid(format!(
                "distanceMetric {metric} is not supported (cosine and euclidean are)"
            )));
        }
        let mut non_filterable: Vec<String> = Vec::new();
        if let Some(config) = f.value("metadataConfiguration") {
            let keys = config.get("nonFilterableMetadataKeys");
            let Some(Value::Array(keys)) = keys else {
                return Err(invalid(
                    "metadataConfiguration.nonFilterableMetadataKeys must be an array of strings",
                ));
            };
            if keys.is_empty() || keys.len() > model::MAX_NON_FILTERABLE_KEYS {
                return Err(invalid(format!(
                    "nonFilterableMetadataKeys must contain between 1 and {} keys",
                    model::MAX_NON_FILTERABLE_KEYS
                )));
            }
            for key in keys {
                let Some(key) = key
                    .as_str()
                    .filter(|k| (1..=63).contains(&k.chars().count()) && !k.contains('\0'))
                else {
                    return Err(invalid(
                        "nonFilterableMetadataKeys must be strings of 1 to 63 characters",
                    ));
                };
                if non_filterable.iter().any(|k| k == key) {
                    return Err(invalid("nonFilterableMetadataKeys must not repeat a key"));
                }
                non_filterable.push(key.to_owned());
            }
        }
        let dimension = i32::try_from(dimension).map_err(|_| invalid("dimension is too large"))?;
        let rows = self
            .run_raw(
                "vector.index.create",
                EF_SEARCH,
                "insert into storage.vector_indexes \
                   (bucket_id, name, data_type, dimension, distance_metric, non_filterable_keys) \
                 select $1, $2, 'float32', $3, $4, $5 \
                 where exists (select 1 from storage.vector_buckets where id = $1) \
                 returning id",
                &[&bucket, &index, &dimension, &metric, &non_filterable],
                true,
            )
            .await
            .map_err(|err| {
                if is_kind(
                    &err,
                    &sovra_pg::tokio_postgres::error::SqlState::UNIQUE_VIOLATION,
                ) {
                    model::conflict("Vector index", &index)
                } else {
                    db_error(&err)
                }
            })?;
        if rows.is_empty() {
            return Err(not_found("Vector bucket", &bucket));
        }
        self.cache().forget(&bucket, &index);
        Ok(empty())
    }

    async fn get_index(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let index = f.index()?;
        let rows = self
            .run(
                "vector.index.get",
                "select exists (select 1 from storage.vector_buckets where id = $1), \
                 i.name, i.data_type, i.dimension, i.distance_metric, i.non_filterable_keys, \
                 extract(epoch from i.created_at)::int8 \
                 from (values (1)) as one(x) \
                 left join storage.vector_indexes i on i.bucket_id = $1 and i.name = $2",
                &[&bucket, &index],
                false,
            )
            .await?;
        let row = rows.first().ok_or_else(StorageError::internal)?;
        if !row.get::<_, bool>(0) {
            return Err(not_found("Vector bucket", &bucket));
        }
        let Some(name) = row.get::<_, Option<String>>(1) else {
            return Err(not_found("Vector index", &index));
        };
        let non_filterable: Vec<String> = row.get(5);
        let mut body = json!({
            "indexName": name,
            "vectorBucketName": bucket,
            "dataType": row.get::<_, String>(2),
            "dimension": row.get::<_, i32>(3),
            "distanceMetric": row.get::<_, String>(4),
            "creationTime": row.get::<_, i64>(6),
        });
        if !non_filterable.is_empty() {
            body["metadataConfiguration"] = json!({"nonFilterableMetadataKeys": non_filterable});
        }
        Ok(ok(json!({"index": body})))
    }

    async fn list_indexes(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let prefix = f.string("prefix")?.unwrap_or("").to_owned();
        let max = f
            .int("maxResults", 1, model::MAX_LIST_NAMES)?
            .unwrap_or(model::MAX_LIST_NAMES);
        let after = f.token()?.unwrap_or_default();
        let rows = self
            .run(
                "vector.index.list",
                "select exists (select 1 from storage.vector_buckets where id = $1), \
                 i.name, extract(epoch from i.created_at)::int8 \
                 from (values (1)) as one(x) left join lateral ( \
                   select name, created_at from storage.vector_indexes \
                   where bucket_id = $1 and name > $2 and starts_with(name, $3) \
                   order by name limit $4) i on true \
                 order by i.name",
                &[&bucket, &after, &prefix, &(max + 1)],
                false,
            )
            .await?;
        if !rows.first().is_some_and(|row| row.get::<_, bool>(0)) {
            return Err(not_found("Vector bucket", &bucket));
        }
        let rows: Vec<Row> = rows
            .into_iter()
            .filter(|row| row.get::<_, Option<String>>(1).is_some())
            .collect();
        let (page, next) = page(&rows, max);
        let indexes: Vec<Value> = page
            .iter()
            .map(|row| {
                json!({
                    "indexName": row.get::<_, String>(1),
                    "vectorBucketName": bucket,
                    "creationTime": row.get::<_, i64>(2),
                })
            })
            .collect();
        let mut body = json!({"indexes": indexes});
        if let Some(last) = next {
            body["nextToken"] = json!(model::encode_token(&last.get::<_, String>(1)));
        }
        Ok(ok(body))
    }

    async fn delete_index(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let index = f.index()?;
        let rows = self
            .run(
                "vector.index.delete",
                "with d as (delete from storage.vector_indexes where bucket_id = $1 and name = $2 returning id) \
                 select exists (select 1 from storage.vector_buckets where id = $1), (select count(*) from d)",
                &[&bucket, &index],
                true,
            )
            .await?;
        self.cache().forget(&bucket, &index);
        let row = rows.first().ok_or_else(StorageError::internal)?;
        if !row.get::<_, bool>(0) {
            return Err(not_found("Vector bucket", &bucket));
        }
        if row.get::<_, i64>(1) == 0 {
            return Err(not_found("Vector index", &index));
        }
        Ok(empty())
    }

    async fn put_vectors(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let index = f.index()?;
        let Some(Value::Array(items)) = f.value("vectors") else {
            return Err(match f.value("vectors") {
                None => model::missing("vectors"),
                Some(_) => invalid("vectors must be an array"),
            });
        };
        if items.is_empty() || items.len() > model::MAX_PUT_VECTORS {
            return Err(invalid(format!(
                "vectors must contain between 1 and {} entries",
                model::MAX_PUT_VECTORS
            )));
        }
        let meta = self.index(&bucket, &index, false).await?;
        let mut keys: Vec<String> = Vec::with_capacity(items.len());
        let mut data: Vec<PgVector> = Vec::with_capacity(items.len());
        let mut metadata: Vec<Value> = Vec::with_capacity(items.len());
        let mut seen = std::collections::HashSet::new();
        for item in items {
            let Value::Object(_) = item else {
                return Err(invalid("each vector must be an object"));
            };
            let key = match item.get("key") {
                Some(Value::String(key)) => key,
                None | Some(Value::Null) => return Err(model::missing("vectors.key")),
                Some(_) => return Err(invalid("vectors.key must be a string")),
            };
            model::check_key(key, "vectors.key")?;
            if !seen.insert(key.as_str()) {
                return Err(invalid("Request must not contain duplicate keys"));
            }
            let values = model::float32(item.get("data"), "data")?;
            if values.len() != meta.dimension as usize {
                return Err(invalid(format!(
                    "Vector dimension mismatch for key \"{key}\": expected {}, got {}",
                    meta.dimension,
                    values.len()
                )));
            }
            let md = match item.get("metadata") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(md) => {
                    model::check_metadata(md, &meta.non_filterable, key)?;
                    md.clone()
                }
            };
            keys.push(key.clone());
            data.push(PgVector(values));
            metadata.push(md);
        }
        let sql = format!(
            "{IDX}, ins as ( \
               insert into storage.vectors as v (index_id, bucket_id, index_name, key, embedding, metadata) \
               select $1, $2, $3, u.k, u.e, u.m \
               from unnest($4::text[], $5::extensions.vector[], $6::jsonb[]) as u(k, e, m) \
               where exists (select 1 from idx) \
               on conflict (index_id, key) do update \
                 set embedding = excluded.embedding, metadata = excluded.metadata \
               returning 1) \
             select (select count(*) from idx), (select count(*) from ins)"
        );
        let dimension = meta.dimension;
        self.with_index(&bucket, &index, |meta| {
            let (sql, bucket, index, keys, data, metadata) =
                (&sql, &bucket, &index, &keys, &data, &metadata);
            async move {
                if meta.dimension != dimension {
                    return Err(invalid(format!(
                        "Vector dimension mismatch: expected {}, got {dimension}",
                        meta.dimension
                    )));
                }
                let params: Params = vec![&meta.id, bucket, index, keys, data, metadata];
                let rows = self.run("vector.put", sql, &params, true).await?;
                Ok(found(&rows).then_some(()))
            }
        })
        .await?;
        Ok(empty())
    }

    async fn get_vectors(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let index = f.index()?;
        let keys = f.keys(model::MAX_GET_KEYS)?;
        let return_data = f.bool("returnData")?;
        let return_metadata = f.bool("returnMetadata")?;
        let sql = format!(
            "{IDX} select (select count(*) from idx), v.key, v.embedding, v.metadata \
             from (values (1)) as one(x) left join storage.vectors v \
               on v.index_id = $1 and v.key = any($2::text[]) \
             order by v.key"
        );
        let rows = self
            .with_index(&bucket, &index, |meta| {
                let (sql, keys) = (&sql, &keys);
                async move {
                    let rows = self
                        .run("vector.get", sql, &[&meta.id, keys], false)
                        .await?;
                    Ok(found(&rows).then_some(rows))
                }
            })
            .await?;
        let vectors: Vec<Value> = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(1).is_some())
            .map(|row| vector_json(row, return_data, return_metadata))
            .collect();
        Ok(ok(json!({"vectors": vectors})))
    }

    async fn list_vectors(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let index = f.index()?;
        let max = f
            .int("maxResults", 1, model::MAX_LIST_VECTORS)?
            .unwrap_or(500);
        let after = f.token()?.unwrap_or_default();
        let return_data = f.bool("returnData")?;
        let return_metadata = f.bool("returnMetadata")?;
        let count = f.int("segmentCount", 1, model::MAX_SEGMENTS)?;
        let segment = f.int("segmentIndex", 0, model::MAX_SEGMENTS - 1)?;
        let (count, segment) = match (count, segment) {
            (None, None) => (1, 0),
            (Some(count), Some(segment)) if segment < count => (count, segment),
            (Some(_), Some(_)) => {
                return Err(invalid("segmentIndex must be less than segmentCount"));
            }
            _ => {
                return Err(invalid(
                    "segmentCount and segmentIndex must be provided together",
                ));
            }
        };
        let (count, segment) = (count as i32, segment as i32);
        let sql = format!(
            "{IDX} select (select count(*) from idx), r.key, r.embedding, r.metadata \
             from (values (1)) as one(x) left join lateral ( \
               select v.key, v.embedding, v.metadata from storage.vectors v \
               where v.index_id = $1 and v.key > $2 \
                 and ($3::int4 = 1 or (hashtext(v.key) & 2147483647) % $3::int4 = $4::int4) \
               order by v.key limit $5) r on true \
             order by r.key"
        );
        let rows = self
            .with_index(&bucket, &index, |meta| {
                let (sql, after) = (&sql, &after);
                async move {
                    let limit = max + 1;
                    let rows = self
                        .run(
                            "vector.list",
                            sql,
                            &[&meta.id, after, &count, &segment, &limit],
                            false,
                        )
                        .await?;
                    Ok(found(&rows).then_some(rows))
                }
            })
            .await?;
        let rows: Vec<&Row> = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(1).is_some())
            .collect();
        let more = rows.len() as i64 > max;
        let page = &rows[..rows.len().min(max as usize)];
        let vectors: Vec<Value> = page
            .iter()
            .map(|row| vector_json(row, return_data, return_metadata))
            .collect();
        let mut body = json!({"vectors": vectors});
        if more && let Some(last) = page.last() {
            body["nextToken"] = json!(model::encode_token(&last.get::<_, String>(1)));
        }
        Ok(ok(body))
    }

    async fn delete_vectors(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let index = f.index()?;
        let keys = f.keys(model::MAX_DELETE_KEYS)?;
        let sql = format!(
            "{IDX}, del as (delete from storage.vectors v \
               where v.index_id = $1 and v.key = any($2::text[]) and exists (select 1 from idx) \
               returning 1) \
             select (select count(*) from idx), (select count(*) from del)"
        );
        self.with_index(&bucket, &index, |meta| {
            let (sql, keys) = (&sql, &keys);
            async move {
                let rows = self
                    .run("vector.delete", sql, &[&meta.id, keys], true)
                    .await?;
                Ok(found(&rows).then_some(()))
            }
        })
        .await?;
        Ok(empty())
    }

    async fn query_vectors(&self, f: &Fields) -> Result<Response, StorageError> {
        let bucket = f.bucket()?;
        let index = f.index()?;
        let top_k = f
            .int("topK", 1, model::MAX_TOP_K)?
            .ok_or_else(|| model::missing("topK"))?;
        let query = model::float32(
            Some(
                f.value("queryVector")
                    .ok_or_else(|| model::missing("queryVector"))?,
            ),
            "queryVector",
        )?;
        let return_distance = f.bool("returnDistance")?;
        let return_metadata = f.bool("returnMetadata")?;
        let filter_value = f.value("filter").cloned();
        let query = PgVector(query);
        let metric = self
            .with_index(&bucket, &index, |meta| {
                let (query, filter_value) = (&query, &filter_value);
                async move {
                    if query.0.len() != meta.dimension as usize {
                        return Err(invalid(format!(
                            "Vector dimension mismatch: expected {}, got {}",
                            meta.dimension,
                            query.0.len()
                        )));
                    }
                    let filter = filter_value
                        .as_ref()
                        .map(|value| Filter::parse(value, &meta.non_filterable))
                        .transpose()?;
                    let (condition, filter_params) = match &filter {
                        Some(filter) => {
                            let (sql, params) = filter.to_sql(4);
                            (format!(" and {sql}"), params)
                        }
                        None => (String::new(), Vec::new()),
                    };
                    let (ty, op) = model::order_expr(meta.dimension, &meta.metric);
                    let distance = format!("(v.embedding::{ty} {op} $2::extensions.vector::{ty})");
                    let sql = format!(
                        "{IDX}, hits as ( \
                           select v.key, v.metadata, {distance} as distance \
                           from storage.vectors v where v.index_id = $1{condition} \
                           order by {distance} limit $3) \
                         select (select count(*) from idx), h.key, h.metadata, h.distance \
                         from (values (1)) as one(x) left join hits h on true \
                         order by h.distance, h.key"
                    );
                    let owned: Vec<Box<dyn ToSql + Sync + Send>> = filter_params
                        .into_iter()
                        .map(|p| -> Box<dyn ToSql + Sync + Send> {
                            match p {
                                Param::Text(s) => Box::new(s),
                                Param::Json(v) => Box::new(v),
                                Param::Float(n) => Box::new(n),
                            }
                        })
                        .collect();
                    let mut params: Params = vec![&meta.id, query, &top_k];
                    params.extend(owned.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)));
                    let ef = EF_SEARCH.max(top_k);
                    let rows = self
                        .run_raw("vector.query", ef, &sql, &params, false)
                        .await
                        .map_err(|err| db_error(&err))?;
                    Ok(found(&rows).then(|| (rows, meta.metric.clone())))
                }
            })
            .await?;
        let (rows, metric) = metric;
        let vectors: Vec<Value> = rows
            .iter()
            .filter(|row| row.get::<_, Option<String>>(1).is_some())
            .map(|row| {
                let mut v = json!({"key": row.get::<_, String>(1)});
                if return_metadata {
                    v["metadata"] = row.get::<_, Value>(2);
                }
                if return_distance {
                    v["distance"] = json!(row.get::<_, f64>(3));
                }
                v
            })
            .collect();
        Ok(ok(json!({"vectors": vectors, "distanceMetric": metric})))
    }
}

/// Whether a data statement found its index (first column).
fn found(rows: &[Row]) -> bool {
    rows.first().is_some_and(|row| row.get::<_, i64>(0) > 0)
}

/// The first `max` rows, and the last of them when more follow.
fn page(rows: &[Row], max: i64) -> (&[Row], Option<&Row>) {
    let max = max as usize;
    if rows.len() > max {
        (&rows[..max], rows.get(max - 1))
    } else {
        (rows, None)
    }
}

fn vector_json(row: &Row, data: bool, metadata: bool) -> Value {
    let mut v = json!({"key": row.get::<_, String>(1)});
    if data {
        let PgVector(values) = row.get(2);
        v["data"] = json!({"float32": values});
    }
    if metadata {
        v["metadata"] = row.get::<_, Value>(3);
    }
    v
}
