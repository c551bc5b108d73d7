//! The OpenAPI (Swagger 2.0) description served at `GET /rest/v1/` (spec
//! §2.14), built from the schema cache.

use serde_json::{Map, Value, json};

use crate::schema::{Column, ReturnShape, SchemaCache, Volatility};

/// The JSON Schema type and format of a column.
fn property(column: &Column, foreign: Option<(&str, &str)>) -> Value {
    let ty = column.type_name.name.as_str();
    let json_type = match ty {
        "int2" | "int4" | "int8" => "integer",
        "float4" | "float8" | "numeric" => "number",
        "bool" => "boolean",
        "json" | "jsonb" => "",
        _ if ty.starts_with('_') => "array",
        _ => "string",
    };
    let mut prop = Map::new();
    if !json_type.is_empty() {
        prop.insert("type".into(), json_type.into());
    }
    prop.insert("format".into(), ty.trim_start_matches('_').into());
    if let Some((table, col)) = foreign {
        prop.insert(
            "description".into(),
            format!("Note:\nThis is a Foreign Key to `{table}.{col}`.<fk table='{table}' column='{col}'/>").into(),
        );
    }
    if let Some(default) = &column.default_expr {
        prop.insert("default".into(), default.clone().into());
    }
    Value::Object(prop)
}

/// The document for `schema`, as PostgREST describes it.
pub fn openapi(cache: &SchemaCache, schema: &str, base_path: &str) -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    paths.insert(
        "/".into(),
        json!({"get": {"produces": ["application/openapi+json", "application/json"], "responses": {"200": {"description": "OK"}}, "summary": "OpenAPI description (this document)", "tags": ["Introspection"]}}),
    );
    for relation in cache.relations.values().filter(|r| r.schema == schema) {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for column in &relation.columns {
            let foreign = cache.foreign_keys.iter().find_map(|fk| {
                (fk.schema == relation.schema && fk.table == relation.name)
                    .then(|| fk.columns.iter().position(|c| c == &column.name))
                    .flatten()
                    .and_then(|i| Some((fk.ref_table.as_str(), fk.ref_columns.get(i)?.as_str())))
            });
            properties.insert(column.name.clone(), property(column, foreign));
            if !column.nullable && !column.has_default {
                required.push(Value::from(column.name.clone()));
            }
        }
        let mut definition = json!({"type": "object", "properties": properties});
        if !required.is_empty() {
            definition["required"] = Value::Array(required);
        }
        definitions.insert(relation.name.clone(), definition);
        let tag = json!([relation.name]);
        let ok = json!({"200": {"description": "OK", "schema": {"type": "array", "items": {"$ref": format!("#/definitions/{}", relation.name)}}}, "206": {"description": "Partial Content"}});
        let mut methods = Map::new();
        methods.insert(
            "get".into(),
            json!({"tags": tag, "parameters": [{"$ref": "#/parameters/select"}, {"$ref": "#/parameters/order"}, {"$ref": "#/parameters/range"}, {"$ref": "#/parameters/rangeUnit"}, {"$ref": "#/parameters/offset"}, {"$ref": "#/parameters/limit"}, {"$ref": "#/parameters/preferCount"}], "responses": ok}),
        );
        let body = json!({"in": "body", "name": relation.name, "required": false, "schema": {"$ref": format!("#/definitions/{}", relation.name)}});
        if relation.insertable {
            methods.insert(
                "post".into(),
                json!({"tags": tag, "parameters": [body, {"$ref": "#/parameters/select"}, {"$ref": "#/parameters/preferPost"}], "responses": {"201": {"description": "Created"}}}),
            );
        }
        if relation.updatable {
            methods.insert(
                "patch".into(),
                json!({"tags": tag, "parameters": [body, {"$ref": "#/parameters/preferReturn"}], "responses": {"204": {"description": "No Content"}}}),
            );
        }
        if relation.deletable {
            methods.insert(
                "delete".into(),
                json!({"tags": tag, "parameters": [{"$ref": "#/parameters/preferReturn"}], "responses": {"204": {"description": "No Content"}}}),
            );
        }
        paths.insert(format!("/{}", relation.name), Value::Object(methods));
    }
    for routine in cache.routines.iter().filter(|r| r.schema == schema) {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for param in routine.params.iter().filter(|p| !p.name.is_empty()) {
            properties.insert(
                param.name.clone(),
                json!({"format": param.type_name.name, "type": "string"}),
            );
            if !param.has_default {
                required.push(Value::from(param.name.clone()));
            }
        }
        let args = json!({"in": "body", "name": "args", "required": true, "schema": {"type": "object", "properties": properties, "required": required}});
        let returns = match &routine.returns {
            ReturnShape::Void => "void".to_owned(),
            ReturnShape::Scalar(ty) => ty.name.clone(),
            ReturnShape::Rows(_) => "record".to_owned(),
        };
        let mut methods = Map::new();
        methods.insert(
            "post".into(),
            json!({"tags": ["(rpc) ".to_owned() + &routine.name], "summary": format!("returns {returns}"), "parameters": [args, {"$ref": "#/parameters/preferParams"}], "responses": {"200": {"description": "OK"}}}),
        );
        if routine.volatility != Volatility::Volatile {
            methods.insert(
                "get".into(),
                json!({"tags": ["(rpc) ".to_owned() + &routine.name], "summary": format!("returns {returns}"), "responses": {"200": {"description": "OK"}}}),
            );
        }
        paths.insert(format!("/rpc/{}", routine.name), Value::Object(methods));
    }
    let header = |name: &str, description: &str| json!({"name": name, "in": "header", "type": "string", "description": description});
    let query = |name: &str, description: &str| json!({"name": name, "in": "query", "type": "string", "required": false, "description": description});
    json!({
        "swagger": "2.0",
        "info": {"title": "Sovra REST API", "description": "PostgREST-compatible API of the exposed schema, served by Sovra.", "version": env!("CARGO_PKG_VERSION")},
        "basePath": base_path,
        "schemes": ["http", "https"],
        "consumes": ["application/json", "application/vnd.pgrst.object+json"],
        "produces": ["application/json", "application/vnd.pgrst.object+json", "text/csv"],
        "paths": paths,
        "definitions": definitions,
        "parameters": {
            "select": query("select", "Filtering Columns"),
            "order": query("order", "Ordering"),
            "range": header("Range", "Limiting and Pagination"),
            "rangeUnit": {"name": "Range-Unit", "in": "header", "type": "string", "default": "items", "description": "Limiting and Pagination"},
            "offset": query("offset", "Limiting and Pagination"),
            "limit": query("limit", "Limiting and Pagination"),
            "preferParams": {"name": "Prefer", "in": "header", "type": "string", "enum": ["params=single-object"], "description": "Preference"},
            "preferReturn": {"name": "Prefer", "in": "header", "type": "string", "enum": ["return=representation", "return=minimal", "return=none"], "description": "Preference"},
            "preferCount": {"name": "Prefer", "in": "header", "type": "string", "enum": ["count=none"], "description": "Preference"},
            "preferPost": {"name": "Prefer", "in": "header", "type": "string", "enum": ["return=representation", "return=minimal", "return=none", "resolution=ignore-duplicates", "resolution=merge-duplicates"], "description": "Preference"},
        },
    })
}
