//! Pure rules of the storage API: bucket and object names, size limits,
//! MIME-type allow-lists, `Range` headers and download headers. No IO.
//!
//! Object names never reach the disk or the object store: bytes are kept
//! under a random version id (see [`crate::backend`]), so a name only has to
//! be valid for the API, and no name can escape its bucket.

/// Longest bucket id.
pub const MAX_BUCKET_LEN: usize = 100;
/// Longest object name, in bytes (as Supabase: 1024).
pub const MAX_KEY_LEN: usize = 1024;

/// Characters Supabase allows in bucket ids, besides ASCII letters and digits.
const BUCKET_EXTRA: &str = " _!.*'()&$=@;:+,?-";

/// A bucket id: 1–100 characters from `A-Za-z0-9 _!.*'()&$=@;:+,?-`, not
/// `.` or `..`.
pub fn valid_bucket_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_BUCKET_LEN
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || BUCKET_EXTRA.contains(c))
}

/// An object name: non-empty, at most 1024 bytes, no control characters,
/// no backslash, no empty, `.` or `..` segment, no leading `/`.
/// Supabase allows any printable Unicode besides; so do we.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key
            .chars()
            .any(|c| c.is_control() || c == '\\' || c == '\u{FFFD}')
        && key
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."))
}

/// `file_size_limit` as the API accepts it: a number of bytes, or text
/// like `20GB`, `20MB`, `30KB`, `3B` (decimal multipliers, case-insensitive,
/// optional space).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return None;
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    if number.contains('.') {
        let value: f64 = number.parse().ok()?;
        let bytes = value * multiplier as f64;
        (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
    } else {
        number.parse::<u64>().ok()?.checked_mul(multiplier)
    }
}

/// Whether `mime` (its essence, parameters ignored) matches one of
/// `allowed`, which may hold `type/*` wildcards and `*/*`. An empty or
/// absent list allows everything.
pub fn mime_allowed(mime: &str, allowed: Option<&[String]>) -> bool {
    let Some(allowed) = allowed else { return true };
    if allowed.is_empty() {
        return true;
    }
    let essence = mime_essence(mime);
    let (kind, _) = essence.split_once('/').unwrap_or((essence.as_str(), ""));
    allowed.iter().any(|pattern| {
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern == "*/*" || pattern == "*" {
            return true;
        }
        match pattern.strip_suffix("/*") {
            Some(prefix) => prefix == kind,
            None => pattern == essence,
        }
    })
}

/// `text/plain;charset=UTF-8` → `text/plain`.
pub fn mime_essence(mime: &str) -> String {
    mime.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// A syntactically plausible MIME type (`type/subtype`, token characters).
pub fn valid_mime(mime: &str) -> bool {
    let essence = mime_essence(mime);
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-*".contains(&b))
    };
    token(kind) && token(sub) && mime.len() <= 255
}

/// `Cache-Control` as stored: `max-age=<n>` from a number of seconds or a
/// header value; `no-cache` when absent.
pub fn cache_control(value: Option<&str>) -> String {
    match value.map(str::trim) {
        None | Some("") => "no-cache".to_owned(),
        Some(v) if v.bytes().all(|b| b.is_ascii_digit()) => format!("max-age={v}"),
        Some(v) if v.len() <= 256 && !v.chars().any(char::is_control) => v.to_owned(),
        Some(_) => "no-cache".to_owned(),
    }
}

/// A byte range to serve, inclusive start, exclusive end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: serve the whole object (unknown units, several
    /// ranges, or syntax errors are ignored as RFC 9110 allows).
    Whole,
    Partial(ByteRange),
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-` and `bytes=-n`.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let number = |s: &str| -> Option<Option<u64>> {
        let s = s.trim();
        if s.is_empty() {
            Some(None)
        } else if s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().ok().map(Some)
        } else {
            None
        }
    };
    let (Some(first), Some(last)) = (number(first), number(last)) else {
        return RangeRequest::Whole;
    };
    match (first, last) {
        (None, None) => RangeRequest::Whole,
        (None, Some(suffix)) => {
            if suffix == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(ByteRange {
                    start: size.saturating_sub(suffix),
                    end: size,
                })
            }
        }
        (Some(start), last) => {
            if let Some(last) = last
                && last < start
            {
                return RangeRequest::Whole;
            }
            if start >= size {
                return RangeRequest::Unsatisfiable;
            }
            let end = last.map_or(size, |last| last.saturating_add(1).min(size));
            RangeRequest::Partial(ByteRange { start, end })
        }
    }
}

const FILENAME: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `Content-Disposition` for the `download` query: `attachment;` alone, or
/// with the (URL-encoded) file name in both `filename` and `filename*`.
pub fn content_disposition(name: &str) -> String {
    if name.is_empty() {
        return "attachment;".to_owned();
    }
    let encoded = percent_encoding::utf8_percent_encode(name, FILENAME).to_string();
    format!("attachment; filename={encoded}; filename*=UTF-8''{encoded}")
}

/// Splits `bucket/key…` (already percent-decoded) into its bucket id and
/// object name. The key keeps its inner slashes; duplicate and trailing
/// slashes are refused by [`valid_key`].
pub fn split_bucket_key(path: &str) -> Option<(&str, &str)> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (bucket, key) = path.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

/// Percent-decodes a path, refusing bad UTF-8.
pub fn decode_path(path: &str) -> Option<String> {
    percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// Escapes a folder prefix for a `LIKE` pattern (`\`, `%`, `_`).
pub fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_ids() {
        assert!(valid_bucket_id("avatars"));
        assert!(valid_bucket_id("my bucket (1)"));
        assert!(!valid_bucket_id(""));
        assert!(!valid_bucket_id(".."));
        assert!(!valid_bucket_id("a/b"));
        assert!(!valid_bucket_id("tab\t"));
        assert!(!valid_bucket_id(&"x".repeat(101)));
    }

    #[test]
    fn keys() {
        assert!(valid_key("a.png"));
        assert!(valid_key("folder/sub/cat é.png"));
        assert!(valid_key("..hidden/.x"));
        assert!(!valid_key(""));
        assert!(!valid_key("../etc/passwd"));
        assert!(!valid_key("a/../b"));
        assert!(!valid_key("a/./b"));
        assert!(!valid_key("/abs"));
        assert!(!valid_key("a//b"));
        assert!(!valid_key("a/"));
        assert!(!valid_key("a\\b"));
        assert!(!valid_key("nul\0"));
        assert!(!valid_key("line\nbreak"));
        assert!(!valid_key(&"x".repeat(1025)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Some(1_048_576));
        assert_eq!(parse_size("1mb"), Some(1_000_000));
        assert_eq!(parse_size("20 GB"), Some(20_000_000_000));
        assert_eq!(parse_size("30KB"), Some(30_000));
        assert_eq!(parse_size("3B"), Some(3));
        assert_eq!(parse_size("1.5mb"), Some(1_500_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("12XB"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999999999gb"), None);
    }

    #[test]
    fn mime_lists() {
        let list = vec!["image/*".to_owned(), "text/plain".to_owned()];
        assert!(mime_allowed("image/png", Some(&list)));
        assert!(mime_allowed("Text/Plain; charset=UTF-8", Some(&list)));
        assert!(!mime_allowed("text/html", Some(&list)));
        assert!(!mime_allowed("imagex/png", Some(&list)));
        assert!(mime_allowed("anything/else", None));
        assert!(mime_allowed("anything/else", Some(&[])));
        assert!(valid_mime("text/plain;charset=UTF-8"));
        assert!(!valid_mime("nonsense"));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), RangeRequest::Whole);
        assert_eq!(
            parse_range(Some("bytes=0-4"), 10),
            RangeRequest::Partial(ByteRange { start: 0, end: 5 })
        );
        assert_eq!(
            parse_range(Some("bytes=5-"), 10),
            RangeRequest::Partial(ByteRange { start: 5, end: 10 })
        );
        assert_eq!(
            parse_range(Some("bytes=-3"), 10),
            RangeRequest::Partial(ByteRange { start: 7, end: 10 })
        );
        assert_eq!(
            parse_range(Some("bytes=8-100"), 10),
            RangeRequest::Partial(ByteRange { start: 8, end: 10 })
        );
        assert_eq!(
            parse_range(Some("bytes=10-"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(
            parse_range(Some("bytes=-0"), 10),
            RangeRequest::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=4-2"), 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 10), RangeRequest::Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), RangeRequest::Whole);
    }

    #[test]
    fn dispositions() {
        assert_eq!(content_disposition(""), "attachment;");
        assert_eq!(
            content_disposition("my cat.png"),
            "attachment; filename=my%20cat.png; filename*=UTF-8''my%20cat.png"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(split_bucket_key("b/a/c.png"), Some(("b", "a/c.png")));
        assert_eq!(split_bucket_key("/b/x"), Some(("b", "x")));
        assert_eq!(split_bucket_key("b"), None);
        assert_eq!(split_bucket_key("b/"), None);
        assert_eq!(like_prefix("a_b%/"), "a\\_b\\%/%");
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(s in "\\PC{0,40}", n in 0u64..1000) {
            let _ = valid_key(&s);
            let _ = valid_bucket_id(&s);
            let _ = parse_size(&s);
            let _ = parse_range(Some(&s), n);
            let _ = mime_allowed(&s, Some(std::slice::from_ref(&s)));
            if let RangeRequest::Partial(r) = parse_range(Some(&s), n) {
                proptest::prop_assert!(r.start < r.end && r.end <= n);
            }
        }

        #[test]
        fn valid_keys_have_no_traversal(s in "[a-z./]{0,12}") {
            if valid_key(&s) {
                proptest::prop_assert!(!s.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()));
            }
        }
    }
}
