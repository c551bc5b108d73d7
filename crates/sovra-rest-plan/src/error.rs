//! REST errors in PostgREST's shape: `{code, message, details, hint}` with
//! an HTTP status. One constructor per code, so each code's wording lives
//! in one place.

/// An error the REST layer answers with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// A string for most errors; a JSON array for PGRST201.
    pub details: Option<serde_json::Value>,
    pub hint: Option<String>,
    /// Extra response headers (from `RAISE SQLSTATE 'PGRST'`); boxed, as
    /// errors travel in every `Result` of the planner.
    pub headers: Option<Box<ErrorHeaders>>,
}

/// Response headers an error carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorHeaders(pub Vec<(String, String)>);

impl ApiError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
            details: None,
            hint: None,
            headers: None,
        }
    }

    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> ApiError {
        self.details = Some(serde_json::Value::String(details.into()));
        self
    }

    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }

    /// PGRST000: the database cannot be reached.
    pub fn connection() -> ApiError {
        ApiError::new(503, "PGRST000", "Database connection error.")
    }

    /// PGRST002: the schema cache is not loaded.
    pub fn schema_cache_unavailable() -> ApiError {
        ApiError::new(
            503,
            "PGRST002",
            "Could not query the database for the schema cache. Retrying.",
        )
    }

    /// PGRST003: no pooled connection in time.
    pub fn pool_timeout() -> ApiError {
        ApiError::new(
            504,
            "PGRST003",
            "Timed out acquiring connection from connection pool.",
        )
    }

    /// PGRST100: a query parameter did not parse.
    pub fn parse(err: &sovra_rest_grammar::ParseError) -> ApiError {
        ApiError::new(
            400,
            "PGRST100",
            format!(
                "\"failed to parse {} ({})\" (line 1, column {})",
                err.parameter, err.value, err.column
            ),
        )
        .with_details(err.expected.clone())
    }

    /// PGRST101: a method RPC does not take.
    pub fn rpc_method(method: &str) -> ApiError {
        ApiError::new(
            405,
            "PGRST101",
            format!("Cannot use the {method} method on RPC"),
        )
    }

    /// PGRST102: a body that is not what the request needs.
    pub fn invalid_body(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "PGRST102", message)
    }

    /// PGRST103: a range that cannot be satisfied.
    pub fn range(details: impl Into<String>) -> ApiError {
        ApiError::new(416, "PGRST103", "Requested range not satisfiable").with_details(details)
    }

    /// PGRST106: a schema that is not exposed.
    pub fn invalid_schema(schema: &str, exposed: &[String]) -> ApiError {
        ApiError::new(406, "PGRST106", format!("Invalid schema: {schema}")).with_hint(format!(
            "Only the following schemas are exposed: {}",
            exposed.join(", ")
        ))
    }

    /// PGRST107: an `Accept` nothing matches.
    pub fn not_acceptable(accept: &str) -> ApiError {
        ApiError::new(
            406,
            "PGRST107",
            format!("None of these media types are available: {accept}"),
        )
    }

    /// PGRST108: a parameter names an embed the select does not have.
    pub fn not_embedded(name: &str) -> ApiError {
        ApiError::new(
            400,
            "PGRST108",
            format!("'{name}' is not an embedded resource in this request"),
        )
        .with_hint(format!(
            "Verify that '{name}' is included in the 'select' query parameter."
        ))
    }

    /// PGRST105: PUT filters that are not exactly `eq` on the primary key.
    pub fn put_filters() -> ApiError {
        ApiError::new(
            405,
            "PGRST105",
            "Filters must include all and only primary key columns with 'eq' operators",
        )
    }

    /// PGRST114: PUT with limit or offset.
    pub fn put_limit() -> ApiError {
        ApiError::new(
            400,
            "PGRST114",
            "limit/offset querystring parameters are not allowed for PUT",
        )
    }

    /// PGRST115: a PUT body whose key differs from the URL's.
    pub fn put_mismatch() -> ApiError {
        ApiError::new(
            400,
            "PGRST115",
            "Payload values do not match URL in primary key column(s)",
        )
    }

    /// PGRST116: a singular response without exactly one row.
    pub fn singular(rows: i64) -> ApiError {
        ApiError::new(
            406,
            "PGRST116",
            "Cannot coerce the result to a single JSON object",
        )
        .with_details(format!("The result contains {rows} rows"))
    }

    /// PGRST117: a method the resource does not support.
    pub fn unsupported_method(method: &str) -> ApiError {
        ApiError::new(
            405,
            "PGRST117",
            format!("Unsupported HTTP method: {method}"),
        )
    }

    /// PGRST122: `handling=strict` with preferences Sovra does not know.
    pub fn invalid_preferences(invalid: &[String]) -> ApiError {
        ApiError::new(
            400,
            "PGRST122",
            "Invalid preferences given with handling=strict",
        )
        .with_details(format!("Invalid preferences: {}", invalid.join(", ")))
    }

    /// PGRST124: more rows affected than `max-affected` allows.
    pub fn max_affected(rows: i64) -> ApiError {
        ApiError::new(
            400,
            "PGRST124",
            "Query result exceeds max-affected preference constraint",
        )
        .with_details(format!("The query affects {rows} rows"))
    }

    /// PGRST128: max-affected on a function that does not return a set.
    pub fn max_affected_not_set() -> ApiError {
        ApiError::new(
            400,
            "PGRST128",
            "Function must return SETOF or TABLE when max-affected preference is used with handling=strict",
        )
    }

    /// PGRST125: a path that names no resource.
    pub fn invalid_path() -> ApiError {
        ApiError::new(404, "PGRST125", "Invalid path specified in request URL")
    }

    /// PGRST126: the OpenAPI root, which only the service role may read.
    pub fn openapi_restricted() -> ApiError {
        ApiError::new(404, "PGRST126", "Root endpoint metadata is disabled")
            .with_hint("The OpenAPI description is available with the service_role key.")
    }

    /// PGRST127: a feature Sovra does not implement yet.
    pub fn not_implemented(details: impl Into<String>) -> ApiError {
        ApiError::new(400, "PGRST127", "Feature not implemented").with_details(details)
    }

    /// PGRST100: a nearest-neighbour search by a column that holds no
    /// pgvector vectors.
    pub fn not_a_vector(relation: &str, column: &str, type_name: &str) -> ApiError {
        ApiError::new(
            400,
            "PGRST100",
            format!(
                "Column '{column}' of '{relation}' is of type {type_name}, not a pgvector vector"
            ),
        )
    }

    /// PGRST200: no relationship between origin and target.
    pub fn no_relationship(origin: &str, target: &str) -> ApiError {
        ApiError::new(
            400,
            "PGRST200",
            format!(
                "Could not find a relationship between '{origin}' and '{target}' in the schema cache"
            ),
        )
    }

    /// PGRST201: more than one relationship; `details` is the JSON array
    /// of candidates (kept as JSON by the responder).
    pub fn ambiguous_relationship(
        origin: &str,
        target: &str,
        details: serde_json::Value,
        hint: String,
    ) -> ApiError {
        let mut err = ApiError::new(
            300,
            "PGRST201",
            format!(
                "Could not embed because more than one relationship was found for '{origin}' and '{target}'"
            ),
        )
        .with_hint(hint);
        err.details = Some(details);
        err
    }

    /// PGRST120: a filter other than `is.null` on an embed's name.
    pub fn bad_embed_operator(name: &str) -> ApiError {
        ApiError::new(
            400,
            "PGRST120",
            format!("Bad operator on the '{name}' embedded resource"),
        )
        .with_details("Only is null or not is null filters are allowed on embedded resources")
    }

    /// PGRST118: ordering by a to-many embed.
    pub fn related_order(origin: &str, target: &str) -> ApiError {
        ApiError::new(
            400,
            "PGRST118",
            format!("A related order on '{target}' is not possible"),
        )
        .with_details(format!(
            "'{origin}' and '{target}' do not form a many-to-one or one-to-one relationship"
        ))
    }

    /// PGRST202: no function with these argument names (`raw`: the
    /// parameter type a raw `text/plain`, `text/xml` or octet-stream body
    /// would fill).
    pub fn unknown_function(
        schema: &str,
        function: &str,
        supplied: &[&str],
        json_body: bool,
        raw: Option<&str>,
        suggestion: Option<String>,
    ) -> ApiError {
        let message = if raw.is_some() {
            format!("Could not find the function {schema}.{function} in the schema cache")
        } else if supplied.is_empty() {
            format!(
                "Could not find the function {schema}.{function} without parameters in the schema cache"
            )
        } else {
            format!(
                "Could not find the function {schema}.{function}({}) in the schema cache",
                supplied.join(", ")
            )
        };
        let with = match supplied {
            [] => "without parameters".to_owned(),
            [one] => format!("with parameter {one}"),
            many => format!("with parameters {}", many.join(", ")),
        };
        let searched = match raw {
            Some(type_name) => format!("with a single unnamed {type_name} parameter"),
            None if json_body => format!("{with} or with a single unnamed json/jsonb parameter"),
            None => with,
        };
        let mut err = ApiError::new(404, "PGRST202", message).with_details(format!(
            "Searched for the function {schema}.{function} {searched}, but no matches were found in the schema cache."
        ));
        if let Some(suggestion) = suggestion {
            err = err.with_hint(format!(
                "Perhaps you meant to call the function {suggestion}"
            ));
        }
        err
    }

    /// PGRST203: more than one overload fits.
    pub fn ambiguous_function(signatures: &[String]) -> ApiError {
        ApiError::new(
            300,
            "PGRST203",
            format!(
                "Could not choose the best candidate function between: {}",
                signatures.join(", ")
            ),
        )
        .with_hint("Try renaming the parameters or the function itself in the database so function overloading can be resolved")
    }

    /// PGRST204: a column the relation does not have (writes).
    pub fn unknown_column(column: &str, relation: &str) -> ApiError {
        ApiError::new(
            400,
            "PGRST204",
            format!("Could not find the '{column}' column of '{relation}' in the schema cache"),
        )
    }

    /// PGRST205: a relation the schema cache does not have.
    pub fn unknown_relation(schema: &str, name: &str, suggestion: Option<String>) -> ApiError {
        let mut err = ApiError::new(
            404,
            "PGRST205",
            format!("Could not find the table '{schema}.{name}' in the schema cache"),
        );
        if let Some(suggestion) = suggestion {
            err = err.with_hint(format!(
                "Perhaps you meant the table '{schema}.{suggestion}'"
            ));
        }
        err
    }

    /// `42703` as PostgreSQL words it, raised before the query is sent.
    pub fn undefined_column(relation: &str, column: &str) -> ApiError {
        ApiError::new(
            400,
            "42703",
            format!("column {relation}.{column} does not exist"),
        )
    }

    /// An error PostgreSQL raised, mapped to PostgREST's status (spec §2.16.2).
    pub fn from_database(
        sqlstate: &str,
        message: String,
        details: Option<String>,
        hint: Option<String>,
        anonymous: bool,
    ) -> ApiError {
        let status = sqlstate_status(sqlstate, &message, anonymous);
        ApiError {
            status,
            code: sqlstate.to_owned(),
            message,
            details: details.map(serde_json::Value::String),
            hint,
            headers: None,
        }
    }

    /// PostgREST's custom errors: `RAISE SQLSTATE 'PGRST' USING MESSAGE =
    /// '{"code": …, "message": …, "details": …, "hint": …}', DETAIL =
    /// '{"status": 402, "headers": {…}}'` answers with that body, status
    /// and headers; a payload that is not such JSON is PGRST121.
    pub fn raised(message: &str, detail: Option<&str>) -> ApiError {
        use serde_json::Value;
        let parse_error = |what: &str, value: &str| {
            let hint = if what == "MESSAGE" {
                "MESSAGE must be a JSON object with obligatory keys: 'code', 'message' and optional keys: 'details', 'hint'."
            } else {
                "DETAIL must be a JSON object with obligatory keys: 'status', 'headers' and optional key: 'status_text'."
            };
            ApiError::new(
                500,
                "PGRST121",
                "Could not parse JSON in the RAISE SQLSTATE 'PGRST' error",
            )
            .with_details(format!("Invalid JSON value for {what}: '{value}'"))
            .with_hint(hint)
        };
        let body = match serde_json::from_str::<Value>(message) {
            Ok(Value::Object(body))
                if body.get("code").is_some_and(Value::is_string)
                    && body.get("message").is_some_and(Value::is_string) =>
            {
                body
            }
            _ => return parse_error("MESSAGE", message),
        };
        let text = |key: &str| body.get(key).and_then(Value::as_str).map(str::to_owned);
        let mut err = ApiError::new(
            400,
            &text("code").unwrap_or_default(),
            text("message").unwrap_or_default(),
        );
        err.details = text("details").map(Value::String);
        err.hint = text("hint");
        let Some(detail) = detail else {
            return err;
        };
        let detail_value = match serde_json::from_str::<Value>(detail) {
            Ok(Value::Object(detail)) => detail,
            _ => return parse_error("DETAIL", detail),
        };
        let status = detail_value
            .get("status")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (100..600).contains(n));
        let headers = detail_value.get("headers").and_then(Value::as_object);
        let (Some(status), Some(headers)) = (status, headers) else {
            return parse_error("DETAIL", detail);
        };
        err.status = status;
        let mut pairs = Vec::new();
        for (name, value) in headers {
            let Some(value) = value.as_str() else {
                return parse_error("DETAIL", detail);
            };
            pairs.push((name.clone(), value.to_owned()));
        }
        err.headers = Some(Box::new(ErrorHeaders(pairs)));
        err
    }

    /// PGRST111: `response.headers` that is not an array of one-key objects.
    pub fn bad_response_headers() -> ApiError {
        ApiError::new(
            500,
            "PGRST111",
            "response.headers guc must be a JSON array composed of objects with a single key and a string value",
        )
    }

    /// PGRST112: `response.status` that is not a status code.
    pub fn bad_response_status() -> ApiError {
        ApiError::new(
            500,
            "PGRST112",
            "response.status guc must be a valid status code",
        )
    }
}

/// PostgREST's mapping of SQLSTATE to HTTP status.
pub fn sqlstate_status(code: &str, message: &str, anonymous: bool) -> u16 {
    let class = code.get(..2).unwrap_or("");
    match code {
        "21000" if message.ends_with("requires a WHERE clause") => 400,
        "21000" => 500,
        "22023" if message.starts_with("role \"") && message.ends_with("\" does not exist") => 401,
        "23503" | "23505" => 409,
        "25006" => 405,
        "42501" if anonymous => 401,
        "42501" => 403,
        "42883" if message.starts_with("function xmlagg(") => 406,
        "42883" | "42P01" => 404,
        "42P17" | "53400" => 500,
        "57P01" => 503,
        "P0001" => 400,
        _ => match class {
            "08" => 503,
            "09" | "25" | "2D" | "38" | "39" | "3B" | "40" | "54" | "55" | "57" | "58" | "F0"
            | "HV" | "XX" | "P0" => 500,
            "0L" | "0P" | "28" => 403,
            "53" => 503,
            "PT" => code
                .get(2..)
                .and_then(|n| n.parse::<u16>().ok())
                .filter(|n| (100..600).contains(n))
                .unwrap_or(500),
            _ => 400,
        },
    }
}
