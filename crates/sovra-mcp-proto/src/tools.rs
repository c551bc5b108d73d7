//! Sovra's MCP tools: the catalogue `tools/list` answers and the
//! translation of a `tools/call` into the request that carries it out.
//!
//! Every tool that touches data becomes a request to the same services a
//! supabase-js client calls ([`Action::Rest`]: `/rest/v1`, parsed by
//! `sovra-rest-grammar` and planned by `sovra-rest-plan`;
//! [`Action::ListObjects`] and friends: `/storage/v1`), run there as the
//! caller. Nothing here builds SQL.

use serde_json::{Map, Value, json};

/// The largest `limit` of `query` and `list_objects`.
pub const MAX_ROWS: u64 = 1000;
/// The largest `k` of `vector_search`.
pub const MAX_K: u64 = 100;
/// The most dimensions of a query vector (pgvector's limit for `vector`).
pub const MAX_DIMENSIONS: usize = 16_000;
/// The most rows one `insert` writes.
pub const MAX_INSERT_ROWS: usize = 1000;

/// Query parameters that are not filters.
const RESERVED: &[&str] = &[
    "select",
    "order",
    "limit",
    "offset",
    "columns",
    "on_conflict",
];

/// The tools that write (listed and callable only when writes are on).
pub const WRITE_TOOLS: &[&str] = &["insert", "update", "delete"];

/// A request to `/rest/v1`, as the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestCall {
    pub method: &'static str,
    /// After `/rest/v1`, percent-encoded.
    pub path: String,
    /// The query string, percent-encoded (may be empty).
    pub query: String,
    /// A JSON body.
    pub body: Option<String>,
    /// `Accept-Profile` (reads) or `Content-Profile` (writes).
    pub schema: Option<String>,
    /// `Prefer`.
    pub prefer: Option<&'static str>,
}

/// What a tool call does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Tables, views and functions of the exposed schemas that the caller's
    /// role has privileges on (PostgreSQL answers, as the caller).
    ListTables {
        schema: Option<String>,
    },
    /// Columns, keys and relationships of one relation the caller may use.
    DescribeTable {
        schema: Option<String>,
        table: String,
    },
    Rest(RestCall),
    /// A read ordered by distance to `vector` (pgvector's text form).
    Nearest {
        call: RestCall,
        column: String,
        vector: String,
        metric: String,
    },
    ListBuckets,
    /// `POST /storage/v1/object/list/{bucket}` with this body.
    ListObjects {
        bucket: String,
        body: Value,
    },
    /// A text object, size-capped.
    ReadObject {
        bucket: String,
        path: String,
    },
}

/// Why a call was refused before anything ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// No such tool (or a write tool with writes off): a protocol error.
    UnknownTool(String),
    /// Arguments that do not fit the tool's schema: a tool error the model
    /// can correct.
    InvalidArguments(String),
}

fn tool(name: &str, title: &str, description: &str, schema: Value, read_only: bool) -> Value {
    let mut annotations =
        json!({"title": title, "readOnlyHint": read_only, "openWorldHint": false});
    if !read_only {
        annotations["destructiveHint"] = Value::Bool(name != "insert");
        annotations["idempotentHint"] = Value::Bool(name == "delete");
    }
    json!({
        "name": name,
        "title": title,
        "description": description,
        "inputSchema": schema,
        "annotations": annotations,
    })
}

fn object_schema(properties: Value, required: &[&str]) -> Value {
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

fn schema_property() -> Value {
    json!({"type": "string", "description": "An exposed schema (default: the first of rest.schemas, usually public)."})
}

fn filters_property(description: &str) -> Value {
    json!({
        "type": "object",
        "description": description,
        "additionalProperties": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}}
            ]
        },
    })
}

const FILTERS_DOC: &str = "PostgREST filters: column → \"operator.value\" (eq, neq, gt, gte, lt, lte, like, ilike, is, in, cs, cd, fts, …; not.<op> negates), e.g. {\"status\": \"eq.open\", \"id\": \"in.(1,2,3)\"}; \"or\"/\"and\" take a logic tree, e.g. {\"or\": \"(a.eq.1,b.gt.2)\"}; a list applies several filters to one column.";

/// The tools, in `tools/list` order; the write tools only with `writes`.
pub fn catalogue(writes: bool) -> Vec<Value> {
    let table = json!({"type": "string", "description": "A table or view."});
    let mut tools = vec![
        tool(
            "list_tables",
            "List tables",
            "Tables, views and functions of the exposed schemas that you may use, with your privileges on each (select, insert, update, delete; execute). Rows are still filtered by row-level security.",
            object_schema(json!({"schema": schema_property()}), &[]),
            true,
        ),
        tool(
            "describe_table",
            "Describe a table",
            "Columns (name, type, nullable, default, whether you may read it), primary key, unique keys and foreign-key relationships of one table or view.",
            object_schema(
                json!({"table": table, "schema": schema_property()}),
                &["table"],
            ),
            true,
        ),
        tool(
            "query",
            "Query rows",
            "Reads rows as you, under row-level security, in PostgREST terms: select (columns, renames, casts, embedded relations such as \"id,title,author:users(name)\"), filters, order (\"created_at.desc,id\"), limit and offset. Answers the rows as a JSON array.",
            object_schema(
                json!({
                    "table": table,
                    "schema": schema_property(),
                    "select": {"type": "string", "description": "PostgREST select list (default *)."},
                    "filters": filters_property(FILTERS_DOC),
                    "order": {"type": "string", "description": "PostgREST order, e.g. \"created_at.desc.nullslast,id\"."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS, "default": 100},
                    "offset": {"type": "integer", "minimum": 0},
                }),
                &["table"],
            ),
            true,
        ),
        tool(
            "rpc",
            "Call a function",
            "Calls a database function by name with named arguments, as you (PostgREST's /rpc). Unless the server allows writes, it runs in a read-only transaction.",
            object_schema(
                json!({
                    "function": {"type": "string"},
                    "schema": schema_property(),
                    "args": {"type": "object", "description": "Named arguments.", "additionalProperties": true},
                }),
                &["function"],
            ),
            true,
        ),
        tool(
            "vector_search",
            "Similarity search",
            "Finds the k rows whose pgvector column is nearest to a query vector, as you and under row-level security; each row carries its _distance. Optional PostgREST select and filters.",
            object_schema(
                json!({
                    "table": table,
                    "schema": schema_property(),
                    "column": {"type": "string", "description": "A vector, halfvec or sparsevec column."},
                    "vector": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": MAX_DIMENSIONS},
                    "k": {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": 10},
                    "metric": {"type": "string", "enum": ["cosine", "euclidean", "inner_product", "l1"], "default": "cosine"},
                    "select": {"type": "string", "description": "PostgREST select list (default *)."},
                    "filters": filters_property(FILTERS_DOC),
                }),
                &["table", "column", "vector"],
            ),
            true,
        ),
        tool(
            "list_buckets",
            "List storage buckets",
            "The storage buckets you may see.",
            object_schema(json!({}), &[]),
            true,
        ),
        tool(
            "list_objects",
            "List storage objects",
            "Objects and folders of a bucket under a prefix, as you (storage policies apply).",
            object_schema(
                json!({
                    "bucket": {"type": "string"},
                    "prefix": {"type": "string", "description": "A folder, e.g. \"reports/2026\" (default: the bucket's root)."},
                    "search": {"type": "string", "description": "Only names that start with this."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS, "default": 100},
                    "offset": {"type": "integer", "minimum": 0},
                }),
                &["bucket"],
            ),
            true,
        ),
        tool(
            "read_object",
            "Read a text object",
            "The content of a text object (text/*, JSON, XML, CSV, YAML, …) up to the server's size cap, as you.",
            object_schema(
                json!({"bucket": {"type": "string"}, "path": {"type": "string", "description": "The object's name, e.g. \"reports/2026/q1.md\"."}}),
                &["bucket", "path"],
            ),
            true,
        ),
    ];
    if writes {
        tools.push(tool(
            "insert",
            "Insert rows",
            "Inserts one row (an object) or several (an array of objects) as you, under row-level security; answers the rows written.",
            object_schema(
                json!({
                    "table": table,
                    "schema": schema_property(),
                    "rows": {"anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}, "minItems": 1, "maxItems": MAX_INSERT_ROWS}]},
                }),
                &["table", "rows"],
            ),
            false,
        ));
        tools.push(tool(
            "update",
            "Update rows",
            "Sets columns of the rows that match the filters (at least one filter), as you; answers the rows changed.",
            object_schema(
                json!({
                    "table": table,
                    "schema": schema_property(),
                    "values": {"type": "object", "minProperties": 1},
                    "filters": filters_property(FILTERS_DOC),
                }),
                &["table", "values", "filters"],
            ),
            false,
        ));
        tools.push(tool(
            "delete",
            "Delete rows",
            "Deletes the rows that match the filters (at least one filter), as you; answers the rows deleted.",
            object_schema(
                json!({
                    "table": table,
                    "schema": schema_property(),
                    "filters": filters_property(FILTERS_DOC),
                }),
                &["table", "filters"],
            ),
            false,
        ));
    }
    tools
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

struct Args<'a> {
    args: &'a Map<String, Value>,
}

fn invalid(message: impl Into<String>) -> CallError {
    CallError::InvalidArguments(message.into())
}

impl<'a> Args<'a> {
    /// Refuses arguments the tool does not take.
    fn new(args: &'a Map<String, Value>, known: &[&str]) -> Result<Args<'a>, CallError> {
        if let Some(unknown) = args.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(invalid(format!("unknown argument `{unknown}`")));
        }
        Ok(Args { args })
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, CallError> {
        match self.args.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(invalid(format!("`{name}` must be a string"))),
        }
    }

    fn required(&self, name: &str) -> Result<&'a str, CallError> {
        match self.string(name)? {
            Some(text) if !text.is_empty() => Ok(text),
            _ => Err(invalid(format!("`{name}` is required"))),
        }
    }

    fn integer(&self, name: &str, min: u64, max: u64, default: u64) -> Result<u64, CallError> {
        match self.args.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(value) => value
                .as_u64()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| invalid(format!("`{name}` must be an integer from {min} to {max}"))),
        }
    }

    fn schema(&self) -> Result<Option<String>, CallError> {
        Ok(self.string("schema")?.map(str::to_owned))
    }

    /// `filters` as query pairs; `required` refuses none.
    fn filters(&self, query: &mut Vec<(String, String)>, required: bool) -> Result<(), CallError> {
        let filters = match self.args.get("filters") {
            None | Some(Value::Null) => None,
            Some(Value::Object(filters)) => Some(filters),
            Some(_) => return Err(invalid("`filters` must be an object")),
        };
        let before = query.len();
        for (key, value) in filters.into_iter().flatten() {
            if key.is_empty() || RESERVED.contains(&key.as_str()) {
                return Err(invalid(format!(
                    "`{key}` is not a filter (use the tool's own arguments)"
                )));
            }
            let values: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for value in values {
                let Value::String(text) = value else {
                    return Err(invalid(format!(
                        "filter `{key}` must be a string such as \"eq.value\""
                    )));
                };
                query.push((key.clone(), text.clone()));
            }
        }
        if required && query.len() == before {
            return Err(invalid(
                "`filters` must name the rows (at least one filter)",
            ));
        }
        Ok(())
    }
}

fn query_string(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| format!("{}={}", encode(key), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

fn table_path(table: &str) -> String {
    format!("/{}", encode(table))
}

/// The action of calling tool `name` with `args`.
pub fn call(name: &str, args: &Map<String, Value>, writes: bool) -> Result<Action, CallError> {
    if WRITE_TOOLS.contains(&name) && !writes {
        return Err(CallError::UnknownTool(name.to_owned()));
    }
    match name {
        "list_tables" => {
            let args = Args::new(args, &["schema"])?;
            Ok(Action::ListTables {
                schema: args.schema()?,
            })
        }
        "describe_table" => {
            let args = Args::new(args, &["table", "schema"])?;
            Ok(Action::DescribeTable {
                schema: args.schema()?,
                table: args.required("table")?.to_owned(),
            })
        }
        "query" => {
            let args = Args::new(
                args,
                &[
                    "table", "schema", "select", "filters", "order", "limit", "offset",
                ],
            )?;
            let table = args.required("table")?;
            let mut pairs = Vec::new();
            if let Some(select) = args.string("select")? {
                pairs.push(("select".to_owned(), select.to_owned()));
            }
            args.filters(&mut pairs, false)?;
            if let Some(order) = args.string("order")? {
                pairs.push(("order".to_owned(), order.to_owned()));
            }
            let limit = args.integer("limit", 1, MAX_ROWS, 100)?;
            pairs.push(("limit".to_owned(), limit.to_string()));
            let offset = args.integer("offset", 0, i64::MAX as u64, 0)?;
            if offset > 0 {
                pairs.push(("offset".to_owned(), offset.to_string()));
            }
            Ok(Action::Rest(RestCall {
                method: "GET",
                path: table_path(table),
                query: query_string(&pairs),
                body: None,
                schema: args.schema()?,
                prefer: None,
            }))
        }
        "rpc" => {
            let args = Args::new(args, &["function", "schema", "args"])?;
            let function = args.required("function")?;
            let arguments = match args.args.get("args") {
                None | Some(Value::Null) => Map::new(),
                Some(Value::Object(arguments)) => arguments.clone(),
                Some(_) => return Err(invalid("`args` must be an object")),
            };
            // With writes off, the server runs it in a read-only
            // transaction.
            let call = RestCall {
                method: "POST",
                path: format!("/rpc/{}", encode(function)),
                query: String::new(),
                body: Some(Value::Object(arguments).to_string()),
                schema: args.schema()?,
                prefer: None,
            };
            Ok(Action::Rest(call))
        }
        "vector_search" => {
            let args = Args::new(
                args,
                &[
                    "table", "schema", "column", "vector", "k", "metric", "select", "filters",
                ],
            )?;
            let table = args.required("table")?;
            let column = args.required("column")?.to_owned();
            let Some(Value::Array(items)) = args.args.get("vector") else {
                return Err(invalid("`vector` must be an array of numbers"));
            };
            if items.is_empty() || items.len() > MAX_DIMENSIONS {
                return Err(invalid(format!(
                    "`vector` must have 1 to {MAX_DIMENSIONS} dimensions"
                )));
            }
            let mut numbers = Vec::with_capacity(items.len());
            for item in items {
                match item.as_f64() {
                    Some(n) if n.is_finite() => numbers.push(item.to_string()),
                    _ => return Err(invalid("`vector` must be an array of finite numbers")),
                }
            }
            let metric = args.string("metric")?.unwrap_or("cosine").to_owned();
            if !matches!(
                metric.as_str(),
                "cosine" | "euclidean" | "inner_product" | "l1"
            ) {
                return Err(invalid(
                    "`metric` must be cosine, euclidean, inner_product or l1",
                ));
            }
            let k = args.integer("k", 1, MAX_K, 10)?;
            let mut pairs = Vec::new();
            if let Some(select) = args.string("select")? {
                pairs.push(("select".to_owned(), select.to_owned()));
            }
            args.filters(&mut pairs, false)?;
            pairs.push(("limit".to_owned(), k.to_string()));
            Ok(Action::Nearest {
                call: RestCall {
                    method: "GET",
                    path: table_path(table),
                    query: query_string(&pairs),
                    body: None,
                    schema: args.schema()?,
                    prefer: None,
                },
                column,
                vector: format!("[{}]", numbers.join(",")),
                metric,
            })
        }
        "list_buckets" => {
            Args::new(args, &[])?;
            Ok(Action::ListBuckets)
        }
        "list_objects" => {
            let args = Args::new(args, &["bucket", "prefix", "search", "limit", "offset"])?;
            let bucket = args.required("bucket")?.to_owned();
            let mut body = json!({
                "prefix": args.string("prefix")?.unwrap_or(""),
                "limit": args.integer("limit", 1, MAX_ROWS, 100)?,
                "offset": args.integer("offset", 0, i64::MAX as u64, 0)?,
                "sortBy": {"column": "name", "order": "asc"},
            });
            if let Some(search) = args.string("search")? {
                body["search"] = Value::String(search.to_owned());
            }
            Ok(Action::ListObjects { bucket, body })
        }
        "read_object" => {
            let args = Args::new(args, &["bucket", "path"])?;
            Ok(Action::ReadObject {
                bucket: args.required("bucket")?.to_owned(),
                path: args.required("path")?.to_owned(),
            })
        }
        "insert" => {
            let args = Args::new(args, &["table", "schema", "rows"])?;
            let table = args.required("table")?;
            let rows = match args.args.get("rows") {
                Some(row @ Value::Object(_)) => row.clone(),
                Some(Value::Array(rows))
                    if !rows.is_empty()
                        && rows.len() <= MAX_INSERT_ROWS
                        && rows.iter().all(Value::is_object) =>
                {
                    Value::Array(rows.clone())
                }
                _ => {
                    return Err(invalid(format!(
                        "`rows` must be an object or an array of 1 to {MAX_INSERT_ROWS} objects"
                    )));
                }
            };
            Ok(Action::Rest(RestCall {
                method: "POST",
                path: table_path(table),
                query: String::new(),
                body: Some(rows.to_string()),
                schema: args.schema()?,
                prefer: Some("return=representation"),
            }))
        }
        "update" => {
            let args = Args::new(args, &["table", "schema", "values", "filters"])?;
            let table = args.required("table")?;
            let values = match args.args.get("values") {
                Some(Value::Object(values)) if !values.is_empty() => values.clone(),
                _ => return Err(invalid("`values` must be an object of columns to set")),
            };
            let mut pairs = Vec::new();
            args.filters(&mut pairs, true)?;
            Ok(Action::Rest(RestCall {
                method: "PATCH",
                path: table_path(table),
                query: query_string(&pairs),
                body: Some(Value::Object(values).to_string()),
                schema: args.schema()?,
                prefer: Some("return=representation"),
            }))
        }
        "delete" => {
            let args = Args::new(args, &["table", "schema", "filters"])?;
            let table = args.required("table")?;
            let mut pairs = Vec::new();
            args.filters(&mut pairs, true)?;
            Ok(Action::Rest(RestCall {
                method: "DELETE",
                path: table_path(table),
                query: query_string(&pairs),
                body: None,
                schema: args.schema()?,
                prefer: Some("return=representation"),
            }))
        }
        other => Err(CallError::UnknownTool(other.to_owned())),
    }
}
