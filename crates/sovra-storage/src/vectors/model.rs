//! The pure half of vector buckets: names and limits as S3 Vectors (and
//! Supabase's pgvector backend) set them, the request fields, metadata and
//! float32 checks, paging tokens, pgvector's binary format and the errors
//! in the shape storage-js reads for `storage.vectors`.

use base64::Engine as _;
use bytes::{Buf, BufMut, BytesMut};
use serde_json::{Map, Value};
use sovra_pg::tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::StorageError;

/// Most vectors in one `PutVectors`.
pub const MAX_PUT_VECTORS: usize = 500;
/// Most keys in one `GetVectors`.
pub const MAX_GET_KEYS: usize = 100;
/// Most keys in one `DeleteVectors`.
pub const MAX_DELETE_KEYS: usize = 500;
/// Largest `topK` of `QueryVectors`.
pub const MAX_TOP_K: i64 = 100;
/// Largest page of `ListVectors`.
pub const MAX_LIST_VECTORS: i64 = 1000;
/// Largest page of `ListVectorBuckets` and `ListIndexes`.
pub const MAX_LIST_NAMES: i64 = 500;
/// Most segments of a parallel `ListVectors`.
pub const MAX_SEGMENTS: i64 = 16;
/// Longest vector key, in characters.
pub const MAX_KEY_CHARS: usize = 1024;
/// Largest dimension: pgvector's HNSW over `halfvec` (S3 Vectors: 4096).
pub const MAX_DIMENSION: i64 = 4000;
/// Up to this dimension the HNSW index is over `vector`, above over `halfvec`.
pub const MAX_FLOAT32_HNSW: i32 = 2000;
/// Most metadata keys per vector.
pub const MAX_METADATA_KEYS: usize = 50;
/// Largest metadata of one vector (serialised JSON, bytes).
pub const MAX_METADATA_BYTES: usize = 40 * 1024;
/// Largest filterable part of one vector's metadata (bytes).
pub const MAX_FILTERABLE_BYTES: usize = 2 * 1024;
/// Most non-filterable metadata keys of an index.
pub const MAX_NON_FILTERABLE_KEYS: usize = 10;
/// Largest `PutVectors` body (as Supabase Storage's route).
pub const MAX_PUT_BODY: usize = 20 * 1024 * 1024;
/// Largest body of every other call.
pub const MAX_BODY: usize = 1024 * 1024;

fn error(status: u16, code: &'static str, message: impl Into<String>) -> StorageError {
    StorageError {
        status,
        error: code,
        message: message.into(),
        code,
        http: Some(status),
    }
}

/// A field with a wrong value (Storage's `InvalidParameter`, 400).
pub fn invalid(message: impl Into<String>) -> StorageError {
    error(400, "InvalidParameter", message)
}

/// A required field that is missing (Storage's `MissingParameter`, 400).
pub fn missing(field: &str) -> StorageError {
    error(
        400,
        "MissingParameter",
        format!("Missing Required Parameter {field}"),
    )
}

/// An unknown (or invisible) bucket or index (`NotFoundException`, 404).
pub fn not_found(kind: &str, name: &str) -> StorageError {
    error(
        404,
        "NotFoundException",
        format!("{kind} \"{name}\" not found"),
    )
}

/// A bucket or index that exists already (`ConflictException`, 409).
pub fn conflict(kind: &str, name: &str) -> StorageError {
    error(
        409,
        "ConflictException",
        format!("{kind} \"{name}\" already exists"),
    )
}

/// A bucket that still has indexes (`VectorBucketNotEmpty`, 400).
pub fn bucket_not_empty(name: &str) -> StorageError {
    error(
        400,
        "VectorBucketNotEmpty",
        format!("Vector Bucket \"{name}\" not empty"),
    )
}

/// A body over the route's limit (413).
pub fn too_large(limit: usize) -> StorageError {
    error(
        413,
        "EntityTooLarge",
        format!("The request body exceeded {limit} bytes"),
    )
}

/// pgvector is not installed on this database (`FeatureNotEnabled`, 409).
pub fn not_enabled() -> StorageError {
    error(
        409,
        "FeatureNotEnabled",
        "The feature vectorStore is not enabled: pgvector is not installed on this database",
    )
}

/// S3 Vectors' bucket names: 3–63 lowercase letters, digits and hyphens,
/// starting and ending with a letter or digit.
pub fn valid_bucket_name(name: &str) -> bool {
    valid_name(name, false)
}

/// S3 Vectors' index names: as bucket names, dots allowed inside.
pub fn valid_index_name(name: &str) -> bool {
    valid_name(name, true)
}

fn valid_name(name: &str, dots: bool) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (3..=63).contains(&bytes.len())
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes
            .iter()
            .all(|b| edge(b) || *b == b'-' || (dots && *b == b'.'))
}

/// The JSON object of a request body.
pub struct Body(pub Map<String, Value>);

impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Body, StorageError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(Map::new()));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(Body(map)),
            Ok(_) => Err(invalid("The request body must be a JSON object")),
            Err(err) => Err(invalid(format!("Invalid JSON body: {err}"))),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    pub fn value(&self, field: &str) -> Option<&Value> {
        self.get(field)
    }

    pub fn string(&self, field: &str) -> Result<Option<&str>, StorageError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(format!("{field} must be a string"))),
        }
    }

    pub fn required_string(&self, field: &str) -> Result<&str, StorageError> {
        self.string(field)?.ok_or_else(|| missing(field))
    }

    pub fn bool(&self, field: &str) -> Result<bool, StorageError> {
        match self.get(field) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(invalid(format!("{field} must be a boolean"))),
        }
    }

    /// An integer field within `min..=max`.
    pub fn int(&self, field: &str, min: i64, max: i64) -> Result<Option<i64>, StorageError> {
        match self.get(field) {
            None => Ok(None),
            Some(value) => match value.as_i64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(invalid(format!(
                    "{field} must be an integer from {min} to {max}"
                ))),
            },
        }
    }

    /// The vector bucket named by `vectorBucketName`, validated.
    pub fn bucket(&self) -> Result<String, StorageError> {
        let name = self.required_string("vectorBucketName")?;
        if !valid_bucket_name(name) {
            return Err(invalid(
                "vectorBucketName must be 3 to 63 lowercase letters, digits or hyphens, starting and ending with a letter or digit",
            ));
        }
        Ok(name.to_owned())
    }

    /// The index named by `indexName`, validated.
    pub fn index(&self) -> Result<String, StorageError> {
        let name = self.required_string("indexName")?;
        if !valid_index_name(name) {
            return Err(invalid(
                "indexName must be 3 to 63 lowercase letters, digits, hyphens or dots, starting and ending with a letter or digit",
            ));
        }
        Ok(name.to_owned())
    }

    /// A list of vector keys (`keys`), 1 to `max`, each valid.
    pub fn keys(&self, max: usize) -> Result<Vec<String>, StorageError> {
        let Some(Value::Array(items)) = self.get("keys") else {
            return Err(match self.get("keys") {
                None => missing("keys"),
                Some(_) => invalid("keys must be an array"),
            });
        };
        if items.is_empty() || items.len() > max {
            return Err(invalid(format!(
                "keys must contain between 1 and {max} entries"
            )));
        }
        items
            .iter()
            .map(|item| match item {
                Value::String(key) => check_key(key, "keys").map(|()| key.clone()),
                _ => Err(invalid("keys must be strings")),
            })
            .collect()
    }

    /// The page token (`nextToken`), decoded.
    pub fn token(&self) -> Result<Option<String>, StorageError> {
        self.string("nextToken")?.map(decode_token).transpose()
    }
}

/// A vector key: 1 to 1024 characters, no NUL (PostgreSQL text).
pub fn check_key(key: &str, field: &str) -> Result<(), StorageError> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_KEY_CHARS {
        return Err(invalid(format!(
            "{field} must be between 1 and {MAX_KEY_CHARS} characters"
        )));
    }
    if key.contains('\0') {
        return Err(invalid(format!("{field} must not contain NUL characters")));
    }
    Ok(())
}

/// `data.float32` (or `queryVector.float32`): finite float32 values.
pub fn float32(value: Option<&Value>, field: &str) -> Result<Vec<f32>, StorageError> {
    let Some(data) = value.and_then(|v| v.get("float32")) else {
        return Err(missing(&format!("{field}.float32")));
    };
    let Value::Array(items) = data else {
        return Err(invalid(format!(
            "{field}.float32 must be an array of numbers"
        )));
    };
    if items.is_empty() {
        return Err(invalid(format!("{field}.float32 must not be empty")));
    }
    items
        .iter()
        .map(|item| {
            let n = item.as_f64().ok_or_else(|| {
                invalid(format!("{field}.float32 must contain only numbers"))
            })?;
            let f = n as f32;
            if f.is_finite() {
                Ok(f)
            } else {
                Err(invalid(format!(
                    "{field}.float32 must contain finite float32 values (no NaN, Infinity or values beyond ±3.4e38)"
                )))
            }
        })
        .collect()
}

/// Checks one vector's metadata: an object of strings, finite numbers,
/// booleans or arrays of them, within S3 Vectors' key count and sizes
/// (the filterable part measured without `non_filterable` keys).
pub fn check_metadata(
    metadata: &Value,
    non_filterable: &[String],
    key: &str,
) -> Result<(), StorageError> {
    let bad = |why: String| invalid(format!("Invalid metadata for vector \"{key}\": {why}"));
    let Value::Object(map) = metadata else {
        return Err(bad("metadata must be an object".to_owned()));
    };
    if map.len() > MAX_METADATA_KEYS {
        return Err(bad(format!("at most {MAX_METADATA_KEYS} keys are allowed")));
    }
    let primitive = |v: &Value| matches!(v, Value::String(_) | Value::Bool(_) | Value::Number(_));
    let mut filterable = 2usize;
    for (name, value) in map {
        if name.is_empty() || name.contains('\0') {
            return Err(bad("metadata keys must be non-empty text".to_owned()));
        }
        let ok = match value {
            Value::Array(items) => items.iter().all(primitive),
            other => primitive(other),
        };
        if !ok {
            return Err(bad(format!(
                "field \"{name}\" must be a string, boolean, finite number or an array of them"
            )));
        }
        if !non_filterable.iter().any(|k| k == name) {
            filterable += name.len() + value.to_string().len() + 4;
        }
    }
    if metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(bad(format!(
            "metadata must be at most {MAX_METADATA_BYTES} bytes"
        )));
    }
    if filterable > MAX_FILTERABLE_BYTES {
        return Err(bad(format!(
            "filterable metadata must be at most {MAX_FILTERABLE_BYTES} bytes (declare large keys in nonFilterableMetadataKeys)"
        )));
    }
    Ok(())
}

/// The opaque page token of a listing: base64url of the last name or key.
pub fn encode_token(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last.as_bytes())
}

pub fn decode_token(token: &str) -> Result<String, StorageError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|s| !s.contains('\0'))
        .ok_or_else(|| invalid("nextToken is not a token this server issued"))
}

/// The distance operator and the column expression an index's HNSW index
/// is built on (`storage.vector_index_created` makes the same).
pub fn order_expr(dimension: i32, metric: &str) -> (String, &'static str) {
    let op = if metric == "cosine" {
        "operator(extensions.<=>)"
    } else {
        "operator(extensions.<->)"
    };
    let ty = if dimension <= MAX_FLOAT32_HNSW {
        "vector"
    } else {
        "halfvec"
    };
    (format!("extensions.{ty}({dimension})"), op)
}

/// A float32 vector in pgvector's binary format (`vector_send`/`vector_recv`:
/// u16 dimension, u16 unused, then big-endian float32s).
#[derive(Debug, Clone, PartialEq)]
pub struct PgVector(pub Vec<f32>);

impl ToSql for PgVector {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let dim = u16::try_from(self.0.len()).map_err(|_| "vector has too many dimensions")?;
        out.reserve(4 + 4 * self.0.len());
        out.put_u16(dim);
        out.put_u16(0);
        for value in &self.0 {
            out.put_f32(*value);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "vector"
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for PgVector {
    fn from_sql(
        _ty: &Type,
        mut raw: &'a [u8],
    ) -> Result<PgVector, Box<dyn std::error::Error + Sync + Send>> {
        if raw.len() < 4 {
            return Err("short vector".into());
        }
        let dim = usize::from(raw.get_u16());
        raw.advance(2);
        if raw.len() != dim * 4 {
            return Err("vector length does not match its dimension".into());
        }
        Ok(PgVector((0..dim).map(|_| raw.get_f32()).collect()))
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "vector"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_s3_vectors() {
        for good in ["abc", "my-bucket-1", &"a".repeat(63)] {
            assert!(valid_bucket_name(good), "{good}");
        }
        for bad in [
            "ab",
            "-abc",
            "abc-",
            "ABC",
            "a.bc",
            "a_bc",
            &"a".repeat(64),
            "äbc",
        ] {
            assert!(!valid_bucket_name(bad), "{bad}");
        }
        assert!(valid_index_name("docs.v1"));
        assert!(!valid_index_name(".docs"));
        assert!(!valid_index_name("docs."));
    }

    #[test]
    fn float32_refuses_non_finite_and_non_numbers() {
        assert_eq!(
            float32(Some(&json!({"float32": [1, 0.5, -2e3]})), "data").unwrap(),
            vec![1.0, 0.5, -2000.0]
        );
        for bad in [
            json!({"float32": [1e39]}),
            json!({"float32": ["NaN"]}),
            json!({"float32": [null]}),
            json!({"float32": []}),
            json!({"float32": "1,2"}),
        ] {
            let err = float32(Some(&bad), "data").unwrap_err();
            assert_eq!(err.code, "InvalidParameter", "{bad}");
        }
        assert_eq!(
            float32(Some(&json!({})), "data").unwrap_err().code,
            "MissingParameter"
        );
    }

    #[test]
    fn metadata_limits() {
        check_metadata(&json!({"a": 1, "b": ["x", true]}), &[], "k").unwrap();
        assert!(check_metadata(&json!([1]), &[], "k").is_err());
        assert!(check_metadata(&json!({"a": {"b": 1}}), &[], "k").is_err());
        assert!(check_metadata(&json!({"a": [[1]]}), &[], "k").is_err());
        assert!(check_metadata(&json!({"a": null}), &[], "k").is_err());
        let big = "x".repeat(3000);
        assert!(check_metadata(&json!({"text": big}), &[], "k").is_err());
        check_metadata(&json!({"text": big}), &["text".to_owned()], "k").unwrap();
        let huge = "x".repeat(MAX_METADATA_BYTES);
        assert!(check_metadata(&json!({"text": huge}), &["text".to_owned()], "k").is_err());
        let many: Map<String, Value> = (0..51).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(check_metadata(&Value::Object(many), &[], "k").is_err());
    }

    #[test]
    fn keys_and_tokens() {
        assert!(check_key("", "key").is_err());
        assert!(check_key(&"é".repeat(1024), "key").is_ok());
        assert!(check_key(&"é".repeat(1025), "key").is_err());
        assert!(check_key("a\0b", "key").is_err());
        let token = encode_token("doc/1 é");
        assert_eq!(decode_token(&token).unwrap(), "doc/1 é");
        assert!(decode_token("!!!").is_err());
    }

    #[test]
    fn vector_binary_format_round_trips() {
        let v = PgVector(vec![1.0, -0.5, 3.25]);
        let mut out = BytesMut::new();
        v.to_sql(&Type::TEXT, &mut out).unwrap();
        assert_eq!(&out[..4], &[0, 3, 0, 0]);
        assert_eq!(PgVector::from_sql(&Type::TEXT, &out).unwrap(), v);
        assert!(PgVector::from_sql(&Type::TEXT, &out[..7]).is_err());
    }
}
