//! AWS Signature Version 4 as S3 clients sign requests: the canonical
//! request, the string to sign, the derived signing key, presigned query
//! parameters and the signatures of `aws-chunked` payload chunks. Pure: no
//! IO, no clock (callers pass the time).

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

/// SHA-256 of the empty string, hex.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// The payload hash of requests whose body is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// The payload hash of `aws-chunked` bodies with a signature per chunk.
pub const STREAMING_PAYLOAD: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
/// `aws-chunked` bodies without chunk signatures, with checksum trailers.
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// Longest validity of a presigned URL (seven days, as S3).
pub const MAX_EXPIRES: u64 = 604_800;
/// How far a signed request's time may be from the server's (15 minutes).
pub const MAX_SKEW: i64 = 900;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The credential scope of a signature: `<key>/<date>/<region>/<service>/aws4_request`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub access_key: String,
    /// `YYYYMMDD`.
    pub date: String,
    pub region: String,
    pub service: String,
}

impl Credential {
    fn parse(text: &str) -> Result<Credential, SigError> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [key, date, region, service, "aws4_request"]
                if !key.is_empty()
                    && date.len() == 8
                    && date.bytes().all(|b| b.is_ascii_digit())
                    && !region.is_empty()
                    && !service.is_empty() =>
            {
                Ok(Credential {
                    access_key: (*key).to_owned(),
                    date: (*date).to_owned(),
                    region: (*region).to_owned(),
                    service: (*service).to_owned(),
                })
            }
            _ => Err(SigError::Malformed("the Credential is malformed")),
        }
    }

    /// `<date>/<region>/<service>/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// A signature as the client presented it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSignature {
    pub credential: Credential,
    /// Lowercase names, as the client listed them.
    pub signed_headers: Vec<String>,
    /// Hex, as sent.
    pub signature: String,
    /// `YYYYMMDDTHHMMSSZ`.
    pub long_date: String,
    pub session_token: Option<String>,
    /// Seconds a presigned URL stays valid; `None` for header signatures.
    pub expires: Option<u64>,
}

/// Why a signature could not even be checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigError {
    /// Not SigV4 at all (another scheme, or nothing).
    Missing,
    /// SigV4, but not well formed.
    Malformed(&'static str),
}

/// Parses `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`
/// with the `x-amz-date` (or `date`) and `x-amz-security-token` headers.
pub fn parse_authorization(
    authorization: &str,
    amz_date: Option<&str>,
    session_token: Option<&str>,
) -> Result<ClientSignature, SigError> {
    let Some(rest) = authorization.strip_prefix(ALGORITHM) else {
        return Err(SigError::Missing);
    };
    if !rest.starts_with(' ') {
        return Err(SigError::Missing);
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((name, value)) = part.trim().split_once('=') else {
            return Err(SigError::Malformed("the Authorization header is malformed"));
        };
        let slot = match name.trim() {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(SigError::Malformed("the Authorization header is malformed")),
        };
        if slot.replace(value.trim()).is_some() {
            return Err(SigError::Malformed("the Authorization header is malformed"));
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(SigError::Malformed("the Authorization header is malformed"));
    };
    let Some(long_date) = amz_date.filter(|d| parse_long_date(d).is_some()) else {
        return Err(SigError::Malformed("X-Amz-Date is missing or malformed"));
    };
    finish(
        credential,
        signed,
        signature,
        long_date,
        session_token,
        None,
    )
}

/// Parses the `X-Amz-*` parameters of a presigned URL (decoded pairs).
pub fn parse_query(query: &[(String, String)]) -> Result<ClientSignature, SigError> {
    let get = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(algorithm) = get("X-Amz-Algorithm") else {
        return Err(SigError::Missing);
    };
    if algorithm != ALGORITHM {
        return Err(SigError::Malformed(
            "X-Amz-Algorithm must be AWS4-HMAC-SHA256",
        ));
    }
    let (Some(credential), Some(signed), Some(signature), Some(long_date), Some(expires)) = (
        get("X-Amz-Credential"),
        get("X-Amz-SignedHeaders"),
        get("X-Amz-Signature"),
        get("X-Amz-Date"),
        get("X-Amz-Expires"),
    ) else {
        return Err(SigError::Malformed(
            "a presigned URL needs X-Amz-Credential, X-Amz-SignedHeaders, X-Amz-Signature, X-Amz-Date and X-Amz-Expires",
        ));
    };
    if parse_long_date(long_date).is_none() {
        return Err(SigError::Malformed("X-Amz-Date is malformed"));
    }
    let expires = expires
        .parse::<u64>()
        .ok()
        .filter(|e| (1..=MAX_EXPIRES).contains(e))
        .ok_or(SigError::Malformed(
            "X-Amz-Expires must be between 1 and 604800 seconds",
        ))?;
    finish(
        credential,
        signed,
        signature,
        long_date,
        get("X-Amz-Security-Token"),
        Some(expires),
    )
}

fn finish(
    credential: &str,
    signed: &str,
    signature: &str,
    long_date: &str,
    session_token: Option<&str>,
    expires: Option<u64>,
) -> Result<ClientSignature, SigError> {
    let credential = Credential::parse(credential)?;
    if !long_date.starts_with(&credential.date) {
        return Err(SigError::Malformed(
            "the date of the Credential is not the date of the request",
        ));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_ascii_lowercase).collect();
    if signed_headers.iter().any(String::is_empty) || !signed_headers.iter().any(|h| h == "host") {
        return Err(SigError::Malformed("SignedHeaders must include host"));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SigError::Malformed("the Signature is malformed"));
    }
    Ok(ClientSignature {
        credential,
        signed_headers,
        signature: signature.to_ascii_lowercase(),
        long_date: long_date.to_owned(),
        session_token: session_token.filter(|t| !t.is_empty()).map(str::to_owned),
        expires,
    })
}

/// Seconds since the epoch of `YYYYMMDDTHHMMSSZ`.
pub fn parse_long_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, s) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYYMMDDTHHMMSSZ` of a time in seconds since the epoch.
pub fn format_long_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Percent-encodes as SigV4 wants: everything but `A-Za-z0-9-_.~`.
pub fn uri_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Splits a raw query string into decoded pairs (`+` stays `+`: S3
/// clients encode a space as `%20`). `None` when an escape is broken.
pub fn decode_query(raw: Option<&str>) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        };
        pairs.push((decode(name)?, decode(value)?));
    }
    Some(pairs)
}

/// The canonical query string: every pair but `X-Amz-Signature`, encoded,
/// sorted by name then value.
pub fn canonical_query(pairs: &[(String, String)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .filter(|(name, _)| name != "X-Amz-Signature")
        .map(|(name, value)| (uri_encode(name), uri_encode(value)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value as it enters the canonical request: trimmed, inner runs
/// of spaces collapsed to one.
fn canonical_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut space = false;
    for c in value.trim().chars() {
        if c == ' ' || c == '\t' {
            space = true;
        } else {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        }
    }
    out
}

/// The canonical request. `headers(name)` gives the values of a request
/// header (lowercase name); `uri` is the path as the client sent it (S3
/// paths are not normalised).
pub fn canonical_request<'h>(
    method: &str,
    uri: &str,
    canonical_query: &str,
    signed_headers: &[String],
    headers: impl Fn(&str) -> Vec<&'h str>,
    payload_hash: &str,
) -> String {
    let mut names: Vec<&str> = signed_headers.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let mut canonical_headers = String::new();
    for name in &names {
        let values: Vec<String> = headers(name).into_iter().map(canonical_value).collect();
        canonical_headers.push_str(name);
        canonical_headers.push(':');
        canonical_headers.push_str(&values.join(","));
        canonical_headers.push('\n');
    }
    let uri = if uri.is_empty() { "/" } else { uri };
    format!(
        "{method}\n{uri}\n{canonical_query}\n{canonical_headers}\n{}\n{payload_hash}",
        names.join(";")
    )
}

/// SHA-256, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable!("any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The string to sign of a canonical request.
pub fn string_to_sign(long_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{long_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// The signing key of a secret for one day, region and service.
pub fn signing_key(secret: &str, credential: &Credential) -> [u8; 32] {
    let date = hmac(
        format!("AWS4{secret}").as_bytes(),
        credential.date.as_bytes(),
    );
    let region = hmac(&date, credential.region.as_bytes());
    let service = hmac(&region, credential.service.as_bytes());
    hmac(&service, b"aws4_request")
}

/// The hex signature of `string_to_sign` under `key`.
pub fn sign(key: &[u8; 32], string_to_sign: &str) -> String {
    hex(&hmac(key, string_to_sign.as_bytes()))
}

/// The string to sign of one `aws-chunked` chunk: bound to the previous
/// signature (the seed signature of the headers for the first chunk).
pub fn chunk_string_to_sign(
    long_date: &str,
    scope: &str,
    previous_signature: &str,
    chunk_sha256_hex: &str,
) -> String {
    format!(
        "AWS4-HMAC-SHA256-PAYLOAD\n{long_date}\n{scope}\n{previous_signature}\n{EMPTY_SHA256}\n{chunk_sha256_hex}"
    )
}

/// Compares two signatures (or any secrets) in constant time.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Signs a request as an S3 client would (for tests and tools): returns
/// the `Authorization` header value.
#[allow(clippy::too_many_arguments)]
pub fn authorization_header<'h>(
    access_key: &str,
    secret: &str,
    region: &str,
    long_date: &str,
    method: &str,
    uri: &str,
    query: &[(String, String)],
    signed_headers: &[String],
    headers: impl Fn(&str) -> Vec<&'h str>,
    payload_hash: &str,
) -> String {
    let credential = Credential {
        access_key: access_key.to_owned(),
        date: long_date.get(..8).unwrap_or_default().to_owned(),
        region: region.to_owned(),
        service: "s3".to_owned(),
    };
    let canonical = canonical_request(
        method,
        uri,
        &canonical_query(query),
        signed_headers,
        headers,
        payload_hash,
    );
    let signature = sign(
        &signing_key(secret, &credential),
        &string_to_sign(long_date, &credential.scope(), &canonical),
    );
    let mut names: Vec<&str> = signed_headers.iter().map(String::as_str).collect();
    names.sort_unstable();
    format!(
        "{ALGORITHM} Credential={access_key}/{}, SignedHeaders={}, Signature={signature}",
        credential.scope(),
        names.join(";")
    )
}

/// A presigned URL's query string (without `X-Amz-Signature`'s value
/// computed yet), as S3 clients build it: the pairs to sign.
pub fn presign_pairs(
    access_key: &str,
    region: &str,
    long_date: &str,
    expires: u64,
    session_token: Option<&str>,
) -> Vec<(String, String)> {
    let date = long_date.get(..8).unwrap_or_default();
    let mut pairs = vec![
        ("X-Amz-Algorithm".to_owned(), ALGORITHM.to_owned()),
        (
            "X-Amz-Credential".to_owned(),
            format!("{access_key}/{date}/{region}/s3/aws4_request"),
        ),
        ("X-Amz-Date".to_owned(), long_date.to_owned()),
        ("X-Amz-Expires".to_owned(), expires.to_string()),
        ("X-Amz-SignedHeaders".to_owned(), "host".to_owned()),
    ];
    if let Some(token) = session_token {
        pairs.push(("X-Amz-Security-Token".to_owned(), token.to_owned()));
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Vec<&'a str> + 'a {
        move |name| {
            pairs
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
                .collect()
        }
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    /// AWS's SigV4 test suite, `get-vanilla`.
    #[test]
    fn aws_test_suite_get_vanilla() {
        let headers = [
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ];
        let canonical = canonical_request(
            "GET",
            "/",
            "",
            &strings(&["host", "x-amz-date"]),
            lookup(&headers),
            EMPTY_SHA256,
        );
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let credential = Credential {
            access_key: "AKIDEXAMPLE".to_owned(),
            date: "20150830".to_owned(),
            region: "us-east-1".to_owned(),
            service: "service".to_owned(),
        };
        let sts = string_to_sign("20150830T123600Z", &credential.scope(), &canonical);
        assert_eq!(
            sts,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        let key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", &credential);
        assert_eq!(
            sign(&key, &sts),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    /// AWS's S3 documentation, "Example: GET Object" (header signature).
    #[test]
    fn s3_documented_get_object() {
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let value = authorization_header(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "20130524T000000Z",
            "GET",
            "/test.txt",
            &[],
            &strings(&["host", "range", "x-amz-content-sha256", "x-amz-date"]),
            lookup(&headers),
            EMPTY_SHA256,
        );
        assert!(
            value.ends_with(
                "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
            ),
            "{value}"
        );
        let parsed = parse_authorization(&value, Some("20130524T000000Z"), None).unwrap();
        assert_eq!(parsed.credential.access_key, "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(parsed.credential.region, "us-east-1");
        assert_eq!(parsed.signed_headers.len(), 4);
    }

    /// AWS's S3 documentation, presigned URL example.
    #[test]
    fn s3_documented_presigned_url() {
        let pairs = presign_pairs(
            "AKIAIOSFODNN7EXAMPLE",
            "us-east-1",
            "20130524T000000Z",
            86_400,
            None,
        );
        let headers = [("host", "examplebucket.s3.amazonaws.com")];
        let canonical = canonical_request(
            "GET",
            "/test.txt",
            &canonical_query(&pairs),
            &strings(&["host"]),
            lookup(&headers),
            UNSIGNED_PAYLOAD,
        );
        let parsed = {
            let mut with_sig = pairs.clone();
            with_sig.push(("X-Amz-Signature".to_owned(), "0".repeat(64)));
            parse_query(&with_sig).unwrap()
        };
        assert_eq!(parsed.expires, Some(86_400));
        let sts = string_to_sign("20130524T000000Z", &parsed.credential.scope(), &canonical);
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            &parsed.credential,
        );
        assert_eq!(
            sign(&key, &sts),
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    /// AWS's S3 documentation, "Example: PUT Object" in `aws-chunked`
    /// chunks with a signature each.
    #[test]
    fn s3_documented_chunked_upload() {
        let headers = [
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
            ("x-amz-content-sha256", STREAMING_PAYLOAD),
        ];
        let value = authorization_header(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "20130524T000000Z",
            "PUT",
            "/examplebucket/chunkObject.txt",
            &[],
            &strings(&[
                "content-encoding",
                "content-length",
                "host",
                "x-amz-content-sha256",
                "x-amz-date",
                "x-amz-decoded-content-length",
                "x-amz-storage-class",
            ]),
            lookup(&headers),
            STREAMING_PAYLOAD,
        );
        let seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
        assert!(value.ends_with(seed), "{value}");
        let credential = Credential {
            access_key: "AKIAIOSFODNN7EXAMPLE".to_owned(),
            date: "20130524".to_owned(),
            region: "us-east-1".to_owned(),
            service: "s3".to_owned(),
        };
        let key = signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &credential);
        let chunk = |previous: &str, data: &[u8]| {
            sign(
                &key,
                &chunk_string_to_sign(
                    "20130524T000000Z",
                    &credential.scope(),
                    previous,
                    &sha256_hex(data),
                ),
            )
        };
        let first = chunk(seed, &[b'a'; 65_536]);
        assert_eq!(
            first,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let second = chunk(&first, &[b'a'; 1024]);
        assert_eq!(
            second,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        assert_eq!(
            chunk(&second, b""),
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
    }

    #[test]
    fn malformed_signatures_are_refused() {
        assert_eq!(
            parse_authorization("Bearer abc", Some("20130524T000000Z"), None),
            Err(SigError::Missing)
        );
        for bad in [
            "AWS4-HMAC-SHA256 Credential=a/20130524/us-east-1/s3/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256 Credential=a/2013/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/20130524/us-east-1/s3/aws4_request, SignedHeaders=date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20130525/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20130524/us-east-1/s3/aws4_request, Credential=b, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(
                matches!(
                    parse_authorization(bad, Some("20130524T000000Z"), None),
                    Err(SigError::Malformed(_))
                ),
                "{bad}"
            );
        }
        let good = "AWS4-HMAC-SHA256 Credential=a/20130524/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000";
        assert!(parse_authorization(good, Some("20130524T000000Z"), None).is_ok());
        assert!(parse_authorization(good, Some("2013-05-24"), None).is_err());
        assert!(parse_authorization(good, None, None).is_err());
        let mut pairs = presign_pairs("a", "us-east-1", "20130524T000000Z", 604_801, None);
        pairs.push(("X-Amz-Signature".to_owned(), "0".repeat(64)));
        assert!(parse_query(&pairs).is_err(), "expiry beyond seven days");
        assert_eq!(parse_query(&[]), Err(SigError::Missing));
    }

    #[test]
    fn dates_round_trip_and_queries_canonicalise() {
        assert_eq!(parse_long_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_long_date("20130524T000000Z"), Some(1_369_353_600));
        assert_eq!(format_long_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(format_long_date(1_709_251_199), "20240229T235959Z");
        assert_eq!(parse_long_date("20240229T235959Z"), Some(1_709_251_199));
        assert_eq!(parse_long_date("20241329T000000Z"), None);
        assert_eq!(parse_long_date("2024022XT000000Z"), None);
        let pairs = decode_query(Some("prefix=a%20b&list-type=2&uploads&x=%2B+")).unwrap();
        assert_eq!(
            canonical_query(&pairs),
            "list-type=2&prefix=a%20b&uploads=&x=%2B%2B"
        );
        assert!(decode_query(Some("a=%FF")).is_none());
        assert_eq!(canonical_value("  a   b \t c "), "a b c");
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }

    fn fuzz_cases() -> u32 {
        std::env::var("SOVRA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(fuzz_cases()))]
        #[test]
        fn fuzz_sigv4_parsers_never_panic(
            header in "AWS4-HMAC-SHA256 [ -~]{0,200}",
            any_text in "\\PC{0,80}",
            query in "[ -~]{0,200}",
        ) {
            let _ = parse_authorization(&header, Some(&any_text), Some(&any_text));
            let _ = parse_authorization(&any_text, Some("20130524T000000Z"), None);
            let _ = parse_long_date(&any_text);
            if let Some(pairs) = decode_query(Some(&query)) {
                let _ = parse_query(&pairs);
                let _ = canonical_query(&pairs);
            }
        }
    }
}
