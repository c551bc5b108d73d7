//! Tokens, hashes and one-time codes. Pure functions, no IO.

use hmac::{Hmac, Mac as _};
use rand::Rng as _;
use sha2::{Digest as _, Sha224, Sha256};
use subtle::ConstantTimeEq as _;

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// `n` random alphanumeric characters from the OS generator.
pub fn random_alnum(n: usize) -> String {
    let mut rng = rand::rngs::OsRng;
    (0..n)
        .map(|_| char::from(ALNUM[rng.gen_range(0..ALNUM.len())]))
        .collect()
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes
}

/// A six-digit one-time code.
pub fn otp_code() -> String {
    format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// GoTrue's hashed token: `hex(SHA-224(<email or phone> + <code>))`. It is
/// what links carry (`token_hash`) and what `/verify` accepts.
pub fn token_hash(subject: &str, code: &str) -> String {
    hex(&Sha224::digest(format!("{subject}{code}").as_bytes()))
}

/// What the database keeps of a link token: its SHA-256, so that reading
/// `auth.users` does not yield working links.
pub fn stored_token(token_hash: &str) -> String {
    sha256_hex(token_hash)
}

/// Constant-time string equality.
pub fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn equal_bytes(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// PKCE S256: base64url(SHA-256(verifier)) without padding.
pub fn pkce_s256(verifier: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decodes base32 (case-insensitive, padding and spaces ignored).
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for c in text.chars().filter(|c| *c != '=' && !c.is_whitespace()) {
        let value = BASE32
            .iter()
            .position(|b| char::from(*b) == c.to_ascii_uppercase())?;
        buffer = (buffer << 5) | value as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(((buffer >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// The RFC 6238 code (HMAC-SHA1, 6 digits) of `secret` for time step
/// `counter` (unix seconds / 30).
pub fn totp_at(secret: &[u8], counter: u64) -> String {
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = (u32::from(digest[offset] & 0x7f) << 24)
        | (u32::from(digest[offset + 1]) << 16)
        | (u32::from(digest[offset + 2]) << 8)
        | u32::from(digest[offset + 3]);
    format!("{:06}", binary % 1_000_000)
}

/// Whether `code` is the TOTP of `secret` at `unix` seconds, allowing one
/// step of clock skew either way.
pub fn totp_check(secret: &[u8], code: &str, unix: u64) -> bool {
    totp_match(secret, code, unix).is_some()
}

/// The time step (of the three around `unix`) whose TOTP `code` is, if
/// any; the latest when several match. Every candidate is compared in
/// constant time.
pub fn totp_match(secret: &[u8], code: &str, unix: u64) -> Option<u64> {
    let step = unix / 30;
    let code = code.trim();
    let mut matched = None;
    for counter in [step.saturating_sub(1), step, step + 1] {
        if equal(&totp_at(secret, counter), code) {
            matched = Some(counter);
        }
    }
    matched.filter(|_| code.len() == 6)
}

/// The `otpauth://` URI authenticator apps scan.
pub fn totp_uri(issuer: &str, account: &str, secret_b32: &str) -> String {
    let issuer_enc = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer_enc}:{}?secret={secret_b32}&issuer={issuer_enc}",
        percent_encode(account)
    )
}

/// The QR code of `text` as SVG markup.
pub fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .build(),
        Err(_) => String::new(),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(text: &str) -> String {
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

/// Decodes `%XX` escapes and `+` (form encoding).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(value) => {
                        out.push(value);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of query parameter `name`.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 appendix B, SHA-1, truncated to 6 digits.
        let secret = b"12345678901234567890";
        assert_eq!(totp_at(secret, 59 / 30), "287082");
        assert_eq!(totp_at(secret, 1_111_111_109 / 30), "081804");
        assert_eq!(totp_at(secret, 1_234_567_890 / 30), "005924");
        assert_eq!(totp_at(secret, 20_000_000_000 / 30), "353130");
        assert!(totp_check(secret, "287082", 59));
        assert!(totp_check(secret, "287082", 89), "one step of skew");
        assert!(!totp_check(secret, "287082", 150));
        assert!(!totp_check(secret, "", 59));
        assert_eq!(totp_match(secret, "287082", 59), Some(1));
        assert_eq!(totp_match(secret, " 287082 ", 89), Some(1));
        assert_eq!(totp_match(secret, "287083", 59), None);
    }

    #[test]
    fn base32_round_trip() {
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_decode("MZXW6YTBOI").unwrap(), b"foobar");
        assert_eq!(base32_decode("mzxw6ytboi======").unwrap(), b"foobar");
        assert_eq!(base32_decode("MZ1"), None);
        let bytes = random_bytes(20);
        assert_eq!(base32_decode(&base32_encode(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn token_hash_matches_gotrue() {
        // hex(sha224("ada@example.com123456"))
        let hash = token_hash("ada@example.com", "123456");
        assert_eq!(hash.len(), 56);
        assert_eq!(hash, token_hash("ada@example.com", "123456"));
        assert_ne!(hash, token_hash("ada@example.com", "123457"));
    }

    #[test]
    fn pkce_matches_rfc7636() {
        assert_eq!(
            pkce_s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn query_and_percent() {
        assert_eq!(
            query_param(Some("a=1&redirect_to=http%3A%2F%2Fx%2Fy&b"), "redirect_to").as_deref(),
            Some("http://x/y")
        );
        assert_eq!(query_param(Some("b"), "b").as_deref(), Some(""));
        assert_eq!(query_param(None, "b"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
        let codes: Vec<String> = (0..50).map(|_| otp_code()).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
        );
        assert!(qr_svg("otpauth://totp/x").starts_with("<?xml"));
    }
}
