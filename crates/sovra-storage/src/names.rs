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

/// Longest content type accepted (bytes).
pub const MAX_CONTENT_TYPE_LEN: usize = 255;

/// Why a content type was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentTypeError {
    Empty,
    TooLong,
    /// A control character (newline, NUL, …) or a byte outside visible ASCII.
    Control,
    Syntax,
}

impl std::fmt::Display for ContentTypeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContentTypeError::Empty => "the content type is empty",
            ContentTypeError::TooLong => "the content type is longer than 255 bytes",
            ContentTypeError::Control => {
                "the content type may hold only visible ASCII characters, spaces and tabs"
            }
            ContentTypeError::Syntax => {
                "the content type must be type/subtype, optionally followed by ;name=value parameters"
            }
        })
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks a content type against RFC 9110 §8.3.1 strictly:
/// `type "/" subtype *( OWS ";" OWS [ name "=" ( token / quoted-string ) ] )`,
/// tokens of `tchar`, at most [`MAX_CONTENT_TYPE_LEN`] bytes, visible ASCII,
/// spaces and tabs only (no control characters, so it can never break a
/// header it is copied into). Returns the value without surrounding
/// whitespace.
pub fn parse_content_type(text: &str) -> Result<&str, ContentTypeError> {
    if text
        .bytes()
        .any(|b| !(b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b)))
    {
        return Err(ContentTypeError::Control);
    }
    let text = text.trim_matches([' ', '\t']);
    if text.is_empty() {
        return Err(ContentTypeError::Empty);
    }
    if text.len() > MAX_CONTENT_TYPE_LEN {
        return Err(ContentTypeError::TooLong);
    }
    let bytes = text.as_bytes();
    let mut at = 0;
    let token = |at: &mut usize| {
        let start = *at;
        while *at < bytes.len() && is_tchar(bytes[*at]) {
            *at += 1;
        }
        *at > start
    };
    let ows = |at: &mut usize| {
        while *at < bytes.len() && matches!(bytes[*at], b' ' | b'\t') {
            *at += 1;
        }
    };
    if !token(&mut at) || bytes.get(at) != Some(&b'/') {
        return Err(ContentTypeError::Syntax);
    }
    at += 1;
    if !token(&mut at) {
        return Err(ContentTypeError::Syntax);
    }
    loop {
        ows(&mut at);
        if at == bytes.len() {
            return Ok(text);
        }
        if bytes[at] != b';' {
            return Err(ContentTypeError::Syntax);
        }
        at += 1;
        ows(&mut at);
        if at == bytes.len() || bytes[at] == b';' {
            continue; // an empty parameter, as RFC 9110 allows
        }
        if !token(&mut at) || bytes.get(at) != Some(&b'=') {
            return Err(ContentTypeError::Syntax);
        }
        at += 1;
        if bytes.get(at) == Some(&b'"') {
            at += 1;
            loop {
                match bytes.get(at) {
                    None => return Err(ContentTypeError::Syntax),
                    Some(b'"') => {
                        at += 1;
                        break;
                    }
                    Some(b'\\') => {
                        if bytes.get(at + 1).is_none() {
                            return Err(ContentTypeError::Syntax);
                        }
                        at += 2;
                    }
                    Some(_) => at += 1,
                }
            }
        } else if !token(&mut at) {
            return Err(ContentTypeError::Syntax);
        }
    }
}

/// A valid content type (see [`parse_content_type`]).
pub fn valid_mime(mime: &str) -> bool {
    parse_content_type(mime).is_ok()
}

/// Content types a browser renders as a document that can run script or
/// pose as a page of the API's origin: HTML, XHTML, SVG and every XML
/// type (XSLT included). They are served as attachments.
pub fn is_active_content(mime: &str) -> bool {
    let essence = mime_essence(mime);
    matches!(
        essence.as_str(),
        "text/html"
            | "application/xhtml+xml"
            | "image/svg+xml"
            | "text/xml"
            | "application/xml"
            | "text/xsl"
            | "application/xslt+xml"
            | "multipart/x-mixed-replace"
    ) || essence.ends_with("+xml")
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

/// Whether `text` is a UTC timestamp as JavaScript's `toISOString()`
/// writes it (`2026-01-05T10:11:12.345Z`) and names a real instant, so
/// that PostgreSQL will take it as a `timestamptz`.
pub fn is_iso_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() != 24 {
        return false;
    }
    let shape = b.iter().enumerate().all(|(i, c)| match i {
        4 | 7 => *c == b'-',
        10 => *c == b'T',
        13 | 16 => *c == b':',
        19 => *c == b'.',
        23 => *c == b'Z',
        _ => c.is_ascii_digit(),
    });
    if !shape {
        return false;
    }
    let num = |from: usize, to: usize| {
        text[from..to]
            .bytes()
            .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
    };
    let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    year >= 1
        && (1..=days).contains(&day)
        && num(11, 13) < 24
        && num(14, 16) < 60
        && num(17, 19) < 60
}

// TUS 1.0.0 request headers. Pure, so that they can be fuzzed.

/// Most `Upload-Metadata` pairs accepted (storage-js sends five).
pub const MAX_TUS_METADATA_PAIRS: usize = 32;

/// `Upload-Length` and `Upload-Offset`: decimal digits only (optional
/// surrounding spaces), at most `i64::MAX` (they are stored as `int8`).
pub fn parse_tus_u64(text: &str) -> Option<u64> {
    let text = text.trim_matches([' ', '\t']);
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>()
        .ok()
        .filter(|n| i64::try_from(*n).is_ok())
}

/// `Upload-Defer-Length`: the only value TUS defines is `1`.
pub fn parse_tus_defer_length(text: &str) -> Option<bool> {
    (text.trim_matches([' ', '\t']) == "1").then_some(true)
}

/// Whether a `Content-Type` is TUS' `application/offset+octet-stream`
/// (parameters allowed, nothing else).
pub fn is_tus_offset_stream(content_type: &str) -> bool {
    parse_content_type(content_type)
        .is_ok_and(|_| mime_essence(content_type) == "application/offset+octet-stream")
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (the value
/// may be absent). Keys are non-empty ASCII without spaces or commas and
/// unique; values must decode to UTF-8. At most
/// [`MAX_TUS_METADATA_PAIRS`] pairs.
pub fn parse_tus_metadata(header: &str) -> Result<Vec<(String, String)>, &'static str> {
    use base64::Engine as _;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in header.split(',').map(|s| s.trim_matches([' ', '\t'])) {
        if item.is_empty() {
            continue;
        }
        if pairs.len() == MAX_TUS_METADATA_PAIRS {
            return Err("Upload-Metadata has too many pairs");
        }
        let (key, value) = item.split_once(' ').unwrap_or((item, ""));
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err("Upload-Metadata keys must be ASCII without spaces or commas");
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err("Upload-Metadata keys must be unique");
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim_matches([' ', '\t']))
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or("Upload-Metadata values must be base64-encoded UTF-8")?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
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
        assert!(is_iso_timestamp("2026-01-05T10:11:12.345Z"));
        assert!(is_iso_timestamp("2024-02-29T23:59:59.999Z"));
        for bad in [
            "2026-02-29T10:11:12.345Z",
            "2026-13-05T10:11:12.345Z",
            "2026-01-05T24:11:12.345Z",
            "2026-01-05 10:11:12.345Z",
            "2026-01-05T10:11:12Z",
            "'; drop table x; --------",
        ] {
            assert!(!is_iso_timestamp(bad), "{bad}");
        }
    }

    #[test]
    fn content_types() {
        for ok in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "text/plain; charset=\"utf-8\"",
            "application/vnd.api+json",
            "multipart/form-data; boundary=----x",
            "text/plain;",
            "text/plain ; a=b ;; c=\"q\\\"d\"",
            "  image/png  ",
        ] {
            assert!(parse_content_type(ok).is_ok(), "{ok}");
        }
        assert_eq!(parse_content_type(" image/png "), Ok("image/png"));
        for (bad, why) in [
            ("", ContentTypeError::Empty),
            ("  ", ContentTypeError::Empty),
            ("text/plain\r\nX-Evil: 1", ContentTypeError::Control),
            ("image/png\n", ContentTypeError::Control),
            ("text/plain\0", ContentTypeError::Control),
            ("text/pl\u{e4}in", ContentTypeError::Control),
            ("nonsense", ContentTypeError::Syntax),
            ("text/", ContentTypeError::Syntax),
            ("/plain", ContentTypeError::Syntax),
            ("text/plain/x", ContentTypeError::Syntax),
            ("text /plain", ContentTypeError::Syntax),
            ("text/plain; charset", ContentTypeError::Syntax),
            ("text/plain; charset=", ContentTypeError::Syntax),
            ("text/plain; charset=\"open", ContentTypeError::Syntax),
            ("text/plain; a=b c", ContentTypeError::Syntax),
            ("text/html, image/png", ContentTypeError::Syntax),
        ] {
            assert_eq!(parse_content_type(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            parse_content_type(&format!("text/{}", "x".repeat(300))),
            Err(ContentTypeError::TooLong)
        );
        // The MIME allow-list is never reached with a type that would
        // break the header it is later served in.
        assert!(!valid_mime("image/png\r\n"));
    }

    #[test]
    fn active_content() {
        for active in [
            "text/html",
            "TEXT/HTML; charset=utf-8",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/xml",
            "application/rss+xml",
        ] {
            assert!(is_active_content(active), "{active}");
        }
        for passive in ["image/png", "text/plain", "application/json", "video/mp4"] {
            assert!(!is_active_content(passive), "{passive}");
        }
    }

    #[test]
    fn tus_headers() {
        assert_eq!(parse_tus_u64("0"), Some(0));
        assert_eq!(parse_tus_u64(" 42 "), Some(42));
        assert_eq!(parse_tus_u64("9223372036854775807"), Some(i64::MAX as u64));
        assert_eq!(parse_tus_u64("9223372036854775808"), None);
        assert_eq!(parse_tus_u64("99999999999999999999"), None);
        assert_eq!(parse_tus_u64("+1"), None);
        assert_eq!(parse_tus_u64("-1"), None);
        assert_eq!(parse_tus_u64("1e3"), None);
        assert_eq!(parse_tus_u64(""), None);
        assert_eq!(parse_tus_defer_length("1"), Some(true));
        assert_eq!(parse_tus_defer_length("0"), None);
        assert!(is_tus_offset_stream("application/offset+octet-stream"));
        assert!(is_tus_offset_stream("Application/Offset+Octet-Stream; x=1"));
        assert!(!is_tus_offset_stream("application/offset+octet-streamx"));
        assert!(!is_tus_offset_stream("application/offset+octet-stream\n"));

        let pairs =
            parse_tus_metadata("bucketName YXZhdGFycw==,objectName YS5wbmc=, empty").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("bucketName".to_owned(), "avatars".to_owned()),
                ("objectName".to_owned(), "a.png".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        assert!(
            parse_tus_metadata("a YQ==,a Yg==").is_err(),
            "duplicate keys"
        );
        assert!(parse_tus_metadata("a !!!").is_err(), "not base64");
        assert!(parse_tus_metadata("a /w==").is_err(), "not UTF-8");
        assert!(parse_tus_metadata("k\u{e9} YQ==").is_err(), "non-ASCII key");
        let many: Vec<String> = (0..=MAX_TUS_METADATA_PAIRS)
            .map(|i| format!("k{i}"))
            .collect();
        assert!(
            parse_tus_metadata(&many.join(",")).is_err(),
            "too many pairs"
        );
        assert_eq!(parse_tus_metadata("").unwrap(), vec![]);
    }

    /// Cases per fuzz target: `SOVRA_FUZZ_CASES` (default 256).
    fn fuzz_cases() -> u32 {
        std::env::var("SOVRA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    fn fuzz_config() -> proptest::test_runner::Config {
        proptest::test_runner::Config::with_cases(fuzz_cases())
    }

    /// Arbitrary bytes as the lossy text a header or path would carry.
    fn lossy(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// Near-valid content types: tokens, separators, quotes and the
    /// characters that break headers, in plausible places.
    fn near_content_type() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(
            "[a-zA-Z+*.-]{0,8}/?[a-zA-Z0-9+.-]{0,8}( ?; ?[a-z]{0,5}=?(\"[a-z \\\\\";\r\n]{0,6}\"?|[a-z0-9-]{0,5}))*[ \t\r\n\0]?",
        )
        .expect("a valid regex")
    }

    proptest::proptest! {
        #![proptest_config(fuzz_config())]

        #[test]
        fn fuzz_names(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
                      near in "[a-z./\\\\%\0 ]{0,24}") {
            for s in [lossy(&bytes), near] {
                if valid_key(&s) {
                    proptest::prop_assert!(s.len() <= MAX_KEY_LEN);
                    proptest::prop_assert!(!s.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()));
                    proptest::prop_assert!(!s.chars().any(char::is_control));
                }
                if valid_bucket_id(&s) {
                    proptest::prop_assert!(!s.contains('/') && s.len() <= MAX_BUCKET_LEN);
                }
                let _ = decode_path(&s);
                let _ = split_bucket_key(&s);
                let like = like_prefix(&s);
                proptest::prop_assert!(like.ends_with('%'));
                let _ = cache_control(Some(&s));
            }
        }

        #[test]
        fn fuzz_sizes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
                      n in 0u64..u64::MAX, unit in "( ?[kKmMgGtT]?[bB]?)?") {
            let _ = parse_size(&lossy(&bytes));
            let text = format!("{n}{unit}");
            if let Some(size) = parse_size(&text) {
                proptest::prop_assert!(size >= n || unit.trim().is_empty());
            }
        }

        #[test]
        fn fuzz_content_type(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
                             near in near_content_type()) {
            for s in [lossy(&bytes), near] {
                if let Ok(clean) = parse_content_type(&s) {
                    // Safe to copy into a header, and stable.
                    proptest::prop_assert!(clean.len() <= MAX_CONTENT_TYPE_LEN);
                    proptest::prop_assert!(clean.bytes().all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b)));
                    proptest::prop_assert!(axum::http::HeaderValue::from_str(clean).is_ok());
                    proptest::prop_assert_eq!(parse_content_type(clean), Ok(clean));
                    proptest::prop_assert!(mime_essence(clean).contains('/'));
                }
                let list = vec![s.clone(), "image/*".to_owned()];
                let _ = mime_allowed(&s, Some(&list));
                let _ = is_active_content(&s);
                let _ = is_tus_offset_stream(&s);
            }
        }

        #[test]
        fn fuzz_range(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..60),
                      a in proptest::option::of(0u64..u64::MAX), b in proptest::option::of(0u64..u64::MAX),
                      size in 0u64..u64::MAX) {
            let near = format!("bytes={}-{}", a.map(|n| n.to_string()).unwrap_or_default(),
                               b.map(|n| n.to_string()).unwrap_or_default());
            for s in [lossy(&bytes), near] {
                if let RangeRequest::Partial(r) = parse_range(Some(&s), size) {
                    proptest::prop_assert!(r.start < r.end && r.end <= size);
                }
            }
        }

        #[test]
        fn fuzz_content_disposition(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let value = content_disposition(&lossy(&bytes));
            proptest::prop_assert!(value.starts_with("attachment;"));
            proptest::prop_assert!(axum::http::HeaderValue::from_str(&value).is_ok());
            proptest::prop_assert!(!value.contains('"') && !value.contains('\r') && !value.contains('\n'));
        }

        #[test]
        fn fuzz_tus_headers(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
                            pairs in proptest::collection::vec(("[a-zA-Z]{1,10}", ".{0,20}"), 0..8),
                            n in proptest::num::u64::ANY) {
            use base64::Engine as _;
            let s = lossy(&bytes);
            let _ = parse_tus_u64(&s);
            let _ = parse_tus_defer_length(&s);
            let _ = parse_tus_metadata(&s);
            // Numbers round-trip up to i64::MAX.
            proptest::prop_assert_eq!(parse_tus_u64(&n.to_string()), i64::try_from(n).ok().map(|_| n));
            // Metadata round-trips when the keys are unique.
            let mut unique: Vec<(String, String)> = Vec::new();
            for (k, v) in pairs {
                if !unique.iter().any(|(u, _)| *u == k) {
                    unique.push((k, v));
                }
            }
            let header = unique
                .iter()
                .map(|(k, v)| format!("{k} {}", base64::engine::general_purpose::STANDARD.encode(v)))
                .collect::<Vec<_>>()
                .join(",");
            proptest::prop_assert_eq!(parse_tus_metadata(&header), Ok(unique));
        }

        #[test]
        fn valid_keys_have_no_traversal(s in "[a-z./]{0,12}") {
            if valid_key(&s) {
                proptest::prop_assert!(!s.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty()));
            }
        }
    }
}
