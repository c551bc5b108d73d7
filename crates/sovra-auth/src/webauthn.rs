//! WebAuthn relying-party verification: pure, no IO.
//!
//! What a browser (or any authenticator) hands back from
//! `navigator.credentials.create()` / `.get()`, as auth-js serialises it
//! (base64url fields), is checked here against what the server stored: the
//! challenge it issued, the RP ID it serves, the origins it accepts, the
//! credential's public key and its last signature counter.
//!
//! Own code on crates already in the tree (`ring` for ES256, EdDSA and
//! RS256; `sha2`; `base64`; `serde_json`) and a small bounded CBOR reader
//! ([`cbor`]): `webauthn-rs` 0.6 would add 86 crates (a second RustCrypto
//! generation, X.509 and ASN.1 parsers, `serde_cbor_2`), `passkey` 49 (it
//! is a client/authenticator library; the server side is left to the
//! user). See docs/auth.md#passkeys-and-webauthn.
//!
//! Attestation: `none` is accepted, and `packed` self-attestation (no
//! certificate chain) is verified with the new credential's own key. Other
//! formats are refused: the options Sovra sends ask for `attestation:
//! "none"`, which makes browsers strip vendor attestation.

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// Longest credential id (WebAuthn §5.8.3: at most 1023 bytes).
pub const MAX_CREDENTIAL_ID: usize = 1023;
/// Longest `clientDataJSON` accepted.
pub const MAX_CLIENT_DATA: usize = 4096;
/// Longest `attestationObject` / `authenticatorData` accepted.
pub const MAX_AUTHENTICATOR_BYTES: usize = 16 * 1024;
/// Longest signature accepted (RSA-8192 is 1024 bytes).
pub const MAX_SIGNATURE: usize = 1024;

const FLAG_UP: u8 = 0x01;
const FLAG_UV: u8 = 0x04;
const FLAG_BE: u8 = 0x08;
const FLAG_BS: u8 = 0x10;
const FLAG_AT: u8 = 0x40;
const FLAG_ED: u8 = 0x80;

/// COSE algorithm identifiers Sovra verifies, in order of preference.
pub const ALGORITHMS: [i64; 3] = [-7, -8, -257];

/// Why a response was refused. The message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Refusal {
    fn new(message: impl Into<String>) -> Refusal {
        Refusal(message.into())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Checked<T> = Result<T, Refusal>;

/// The relying party: its id and the origins it accepts.
#[derive(Debug, Clone)]
pub struct RelyingParty<'a> {
    pub id: &'a str,
    pub origins: &'a [String],
}

/// `navigator.credentials.create()`'s answer as auth-js serialises it
/// (`RegistrationResponseJSON`).
#[derive(Debug, Clone, Deserialize)]
pub struct RegistrationResponse {
    pub id: String,
    #[serde(rename = "rawId", default)]
    pub raw_id: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub response: AttestationJson,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AttestationJson {
    #[serde(rename = "clientDataJSON")]
    pub client_data_json: String,
    #[serde(rename = "attestationObject")]
    pub attestation_object: String,
    #[serde(default)]
    pub transports: Option<Vec<String>>,
}

/// `navigator.credentials.get()`'s answer (`AuthenticationResponseJSON`).
#[derive(Debug, Clone, Deserialize)]
pub struct AssertionResponse {
    pub id: String,
    #[serde(rename = "rawId", default)]
    pub raw_id: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub response: AssertionJson,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AssertionJson {
    #[serde(rename = "clientDataJSON")]
    pub client_data_json: String,
    #[serde(rename = "authenticatorData")]
    pub authenticator_data: String,
    pub signature: String,
    #[serde(rename = "userHandle", default)]
    pub user_handle: Option<String>,
}

/// A credential that passed registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    pub credential_id: Vec<u8>,
    /// The COSE key, as the authenticator encoded it.
    pub public_key: Vec<u8>,
    pub algorithm: i64,
    pub sign_count: u32,
    pub aaguid: [u8; 16],
    pub user_verified: bool,
    pub backup_eligible: bool,
    pub backed_up: bool,
    pub transports: Vec<String>,
}

/// An assertion that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub sign_count: u32,
    pub user_verified: bool,
    pub backed_up: bool,
    /// `userHandle`, decoded, when the authenticator gave one.
    pub user_handle: Option<Vec<u8>>,
}

/// base64url without padding (padding and standard alphabet tolerated).
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url (padded or not), refusing more than `max` bytes.
pub fn from_b64url(text: &str, max: usize, what: &str) -> Checked<Vec<u8>> {
    // 4 characters per 3 bytes: longer text cannot fit.
    if text.len() > max.saturating_mul(4) / 3 + 4 {
        return Err(Refusal::new(format!("{what} is too long")));
    }
    let trimmed = text.trim_end_matches('=');
    let normal: String = trimmed
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(normal.as_bytes())
        .map_err(|_| Refusal::new(format!("{what} is not base64url")))?;
    if bytes.len() > max {
        return Err(Refusal::new(format!("{what} is too long")));
    }
    Ok(bytes)
}

#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(rename = "crossOrigin", default)]
    cross_origin: Option<bool>,
}

/// Checks `clientDataJSON`: its type, challenge and origin.
fn check_client_data(
    raw: &[u8],
    kind: &str,
    challenge: &[u8],
    rp: &RelyingParty<'_>,
) -> Checked<()> {
    let data: ClientData = serde_json::from_slice(raw)
        .map_err(|_| Refusal::new("clientDataJSON is not valid client data"))?;
    if data.kind != kind {
        return Err(Refusal::new(format!(
            "clientDataJSON type is {:?}, expected {kind:?}",
            data.kind
        )));
    }
    let got = from_b64url(&data.challenge, 1024, "challenge")?;
    if !crate::crypto::equal_bytes(&got, challenge) {
        return Err(Refusal::new("challenge does not match"));
    }
    let origin = data.origin.trim_end_matches('/');
    if !rp
        .origins
        .iter()
        .any(|allowed| allowed.trim_end_matches('/') == origin)
    {
        return Err(Refusal::new(format!(
            "origin {:?} is not an allowed origin",
            data.origin
        )));
    }
    if data.cross_origin == Some(true) {
        return Err(Refusal::new("cross-origin ceremonies are not accepted"));
    }
    Ok(())
}

/// Parsed `authenticatorData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthData<'a> {
    pub rp_id_hash: &'a [u8],
    pub flags: u8,
    pub sign_count: u32,
    pub attested: Option<Attested<'a>>,
}

/// Attested credential data (present in registrations).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested<'a> {
    pub aaguid: [u8; 16],
    pub credential_id: &'a [u8],
    pub public_key: &'a [u8],
}

/// Parses `authenticatorData` (WebAuthn §6.1), bounded in every length.
pub fn parse_auth_data(bytes: &[u8]) -> Checked<AuthData<'_>> {
    let bad = |what: &str| Refusal::new(format!("authenticatorData: {what}"));
    if bytes.len() > MAX_AUTHENTICATOR_BYTES {
        return Err(bad("too long"));
    }
    if bytes.len() < 37 {
        return Err(bad("too short"));
    }
    let rp_id_hash = &bytes[..32];
    let flags = bytes[32];
    let sign_count = u32::from_be_bytes([bytes[33], bytes[34], bytes[35], bytes[36]]);
    let mut rest = &bytes[37..];
    let mut attested = None;
    if flags & FLAG_AT != 0 {
        if rest.len() < 18 {
            return Err(bad("truncated attested credential data"));
        }
        let mut aaguid = [0u8; 16];
        aaguid.copy_from_slice(&rest[..16]);
        let id_len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        if id_len == 0 || id_len > MAX_CREDENTIAL_ID {
            return Err(bad("credential id length out of range"));
        }
        rest = &rest[18..];
        if rest.len() < id_len {
            return Err(bad("truncated credential id"));
        }
        let credential_id = &rest[..id_len];
        rest = &rest[id_len..];
        let (_, used) = cbor::parse(rest).map_err(|e| bad(&format!("public key: {e}")))?;
        let public_key = &rest[..used];
        rest = &rest[used..];
        attested = Some(Attested {
            aaguid,
            credential_id,
            public_key,
        });
    }
    if flags & FLAG_ED != 0 {
        let (extensions, used) = cbor::parse(rest).map_err(|e| bad(&format!("extensions: {e}")))?;
        if !matches!(extensions, cbor::Value::Map(_)) {
            return Err(bad("extensions are not a map"));
        }
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(AuthData {
        rp_id_hash,
        flags,
        sign_count,
        attested,
    })
}

/// Checks the RP ID hash and the user-presence / user-verification flags.
fn check_auth_data(data: &AuthData<'_>, rp: &RelyingParty<'_>, require_uv: bool) -> Checked<()> {
    let expected = Sha256::digest(rp.id.as_bytes());
    if !crate::crypto::equal_bytes(data.rp_id_hash, &expected) {
        return Err(Refusal::new("RP ID hash does not match"));
    }
    if data.flags & FLAG_UP == 0 {
        return Err(Refusal::new("user presence flag not set"));
    }
    if require_uv && data.flags & FLAG_UV == 0 {
        return Err(Refusal::new("user verification required"));
    }
    if data.flags & FLAG_BS != 0 && data.flags & FLAG_BE == 0 {
        return Err(Refusal::new("backup state set without backup eligibility"));
    }
    Ok(())
}

/// A credential public key from its COSE encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// ES256: the uncompressed P-256 point.
    Es256(Vec<u8>),
    /// EdDSA over Ed25519.
    Ed25519(Vec<u8>),
    /// RS256: modulus and exponent.
    Rs256 { n: Vec<u8>, e: Vec<u8> },
}

impl PublicKey {
    /// Parses a COSE_Key (RFC 9053) of one of the [`ALGORITHMS`].
    pub fn from_cose(bytes: &[u8]) -> Checked<PublicKey> {
        let value = cbor::parse_all(bytes).map_err(|e| Refusal::new(format!("COSE key: {e}")))?;
        let cbor::Value::Map(entries) = value else {
            return Err(Refusal::new("COSE key is not a map"));
        };
        let int = |label: i64| {
            entries.iter().find_map(|(k, v)| match (k, v) {
                (cbor::Value::Int(k), cbor::Value::Int(v)) if *k == label => Some(*v),
                _ => None,
            })
        };
        let bytes_of = |label: i64| {
            entries.iter().find_map(|(k, v)| match (k, v) {
                (cbor::Value::Int(k), cbor::Value::Bytes(v)) if *k == label => Some(v.to_vec()),
                _ => None,
            })
        };
        let unsupported = || Refusal::new("unsupported public key algorithm");
        match (int(1), int(3)) {
            (Some(2), Some(-7)) => {
                if int(-1) != Some(1) {
                    return Err(Refusal::new("ES256 key is not on P-256"));
                }
                let (Some(x), Some(y)) = (bytes_of(-2), bytes_of(-3)) else {
                    return Err(Refusal::new("ES256 key lacks coordinates"));
                };
                if x.len() != 32 || y.len() != 32 {
                    return Err(Refusal::new("ES256 coordinates are not 32 bytes"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok(PublicKey::Es256(point))
            }
            (Some(1), Some(-8)) => {
                if int(-1) != Some(6) {
                    return Err(Refusal::new("EdDSA key is not Ed25519"));
                }
                match bytes_of(-2) {
                    Some(x) if x.len() == 32 => Ok(PublicKey::Ed25519(x)),
                    _ => Err(Refusal::new("Ed25519 key is not 32 bytes")),
                }
            }
            (Some(3), Some(-257)) => {
                let (Some(n), Some(e)) = (bytes_of(-1), bytes_of(-2)) else {
                    return Err(Refusal::new("RS256 key lacks modulus or exponent"));
                };
                if n.len() < 256 || n.len() > 1024 || e.is_empty() || e.len() > 8 {
                    return Err(Refusal::new("RS256 key size out of range"));
                }
                Ok(PublicKey::Rs256 { n, e })
            }
            _ => Err(unsupported()),
        }
    }

    pub fn algorithm(&self) -> i64 {
        match self {
            PublicKey::Es256(_) => -7,
            PublicKey::Ed25519(_) => -8,
            PublicKey::Rs256 { .. } => -257,
        }
    }

    /// Whether `signature` signs `message` under this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature as sig;
        match self {
            PublicKey::Es256(point) => {
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_ASN1, point)
                    .verify(message, signature)
                    .is_ok()
            }
            PublicKey::Ed25519(key) => sig::UnparsedPublicKey::new(&sig::ED25519, key)
                .verify(message, signature)
                .is_ok(),
            PublicKey::Rs256 { n, e } => sig::RsaPublicKeyComponents { n, e }
                .verify(&sig::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
        }
    }
}

/// Checks the response's `id`/`rawId`/`type` and returns the raw id.
fn credential_id_of(id: &str, raw_id: Option<&str>, kind: Option<&str>) -> Checked<Vec<u8>> {
    if kind.is_some_and(|k| k != "public-key") {
        return Err(Refusal::new("credential type must be public-key"));
    }
    let decoded = from_b64url(id, MAX_CREDENTIAL_ID, "credential id")?;
    if decoded.is_empty() {
        return Err(Refusal::new("credential id is empty"));
    }
    if let Some(raw) = raw_id
        && from_b64url(raw, MAX_CREDENTIAL_ID, "rawId")? != decoded
    {
        return Err(Refusal::new("id and rawId differ"));
    }
    Ok(decoded)
}

/// Verifies a registration (WebAuthn §7.1) for `challenge`.
pub fn verify_registration(
    rp: &RelyingParty<'_>,
    challenge: &[u8],
    require_uv: bool,
    response: &RegistrationResponse,
) -> Checked<NewCredential> {
    let id = credential_id_of(
        &response.id,
        response.raw_id.as_deref(),
        response.kind.as_deref(),
    )?;
    let client_data = from_b64url(
        &response.response.client_data_json,
        MAX_CLIENT_DATA,
        "clientDataJSON",
    )?;
    check_client_data(&client_data, "webauthn.create", challenge, rp)?;
    let attestation = from_b64url(
        &response.response.attestation_object,
        MAX_AUTHENTICATOR_BYTES,
        "attestationObject",
    )?;
    let object = cbor::parse_all(&attestation)
        .map_err(|e| Refusal::new(format!("attestationObject: {e}")))?;
    let (fmt, statement, auth_data) = attestation_parts(&object)?;
    let data = parse_auth_data(auth_data)?;
    check_auth_data(&data, rp, require_uv)?;
    let attested = data
        .attested
        .as_ref()
        .ok_or_else(|| Refusal::new("no attested credential data"))?;
    if attested.credential_id != id.as_slice() {
        return Err(Refusal::new("credential id differs from the attested one"));
    }
    let key = PublicKey::from_cose(attested.public_key)?;
    match fmt {
        "none" => {
            if !matches!(statement, cbor::Value::Map(m) if m.is_empty()) {
                return Err(Refusal::new("attestation none carries a statement"));
            }
        }
        "packed" => {
            let cbor::Value::Map(entries) = statement else {
                return Err(Refusal::new("packed attestation statement is not a map"));
            };
            let field = |name: &str| {
                entries
                    .iter()
                    .find(|(k, _)| matches!(k, cbor::Value::Text(t) if *t == name))
                    .map(|(_, v)| v)
            };
            if field("x5c").is_some() {
                return Err(Refusal::new(
                    "packed attestation with a certificate chain is not supported (ask for attestation none)",
                ));
            }
            let alg = match field("alg") {
                Some(cbor::Value::Int(alg)) => *alg,
                _ => return Err(Refusal::new("packed attestation lacks alg")),
            };
            let Some(cbor::Value::Bytes(sig)) = field("sig") else {
                return Err(Refusal::new("packed attestation lacks sig"));
            };
            if alg != key.algorithm() {
                return Err(Refusal::new(
                    "packed self-attestation alg differs from the key",
                ));
            }
            let mut signed = auth_data.to_vec();
            signed.extend_from_slice(&Sha256::digest(&client_data));
            if !key.verify(&signed, sig) {
                return Err(Refusal::new("packed self-attestation signature is invalid"));
            }
        }
        other => {
            return Err(Refusal::new(format!(
                "attestation format {other:?} is not supported (ask for attestation none)"
            )));
        }
    }
    let mut transports: Vec<String> = response
        .response
        .transports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.len() <= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .collect();
    transports.truncate(8);
    Ok(NewCredential {
        credential_id: id,
        public_key: attested.public_key.to_vec(),
        algorithm: key.algorithm(),
        sign_count: data.sign_count,
        aaguid: attested.aaguid,
        user_verified: data.flags & FLAG_UV != 0,
        backup_eligible: data.flags & FLAG_BE != 0,
        backed_up: data.flags & FLAG_BS != 0,
        transports,
    })
}

/// `fmt`, `attStmt` and `authData` of an attestation object.
fn attestation_parts<'v, 'a>(
    object: &'v cbor::Value<'a>,
) -> Checked<(&'a str, &'v cbor::Value<'a>, &'a [u8])> {
    let cbor::Value::Map(entries) = object else {
        return Err(Refusal::new("attestationObject is not a map"));
    };
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, cbor::Value::Text(t) if *t == name))
            .map(|(_, v)| v)
    };
    let Some(cbor::Value::Text(fmt)) = field("fmt") else {
        return Err(Refusal::new("attestationObject lacks fmt"));
    };
    let Some(statement) = field("attStmt") else {
        return Err(Refusal::new("attestationObject lacks attStmt"));
    };
    let Some(cbor::Value::Bytes(auth_data)) = field("authData") else {
        return Err(Refusal::new("attestationObject lacks authData"));
    };
    Ok((fmt, statement, auth_data))
}

/// The id an assertion names (to find its stored credential).
pub fn assertion_credential_id(response: &AssertionResponse) -> Checked<Vec<u8>> {
    credential_id_of(
        &response.id,
        response.raw_id.as_deref(),
        response.kind.as_deref(),
    )
}

/// Verifies an assertion (WebAuthn §7.2) for `challenge` against the
/// stored key and counter. A counter that does not grow (when either is
/// non-zero) is refused: the authenticator may have been cloned.
pub fn verify_assertion(
    rp: &RelyingParty<'_>,
    challenge: &[u8],
    require_uv: bool,
    public_key: &[u8],
    stored_count: u32,
    response: &AssertionResponse,
) -> Checked<Verified> {
    assertion_credential_id(response)?;
    let client_data = from_b64url(
        &response.response.client_data_json,
        MAX_CLIENT_DATA,
        "clientDataJSON",
    )?;
    check_client_data(&client_data, "webauthn.get", challenge, rp)?;
    let auth_data = from_b64url(
        &response.response.authenticator_data,
        MAX_AUTHENTICATOR_BYTES,
        "authenticatorData",
    )?;
    let data = parse_auth_data(&auth_data)?;
    check_auth_data(&data, rp, require_uv)?;
    let signature = from_b64url(&response.response.signature, MAX_SIGNATURE, "signature")?;
    let key = PublicKey::from_cose(public_key)?;
    let mut signed = auth_data.clone();
    signed.extend_from_slice(&Sha256::digest(&client_data));
    if !key.verify(&signed, &signature) {
        return Err(Refusal::new("signature is invalid"));
    }
    if (data.sign_count != 0 || stored_count != 0) && data.sign_count <= stored_count {
        return Err(Refusal::new(
            "signature counter did not increase (the authenticator may be cloned)",
        ));
    }
    let user_handle = match response.response.user_handle.as_deref() {
        Some(h) if !h.is_empty() => Some(from_b64url(h, 64, "userHandle")?),
        _ => None,
    };
    Ok(Verified {
        sign_count: data.sign_count,
        user_verified: data.flags & FLAG_UV != 0,
        backed_up: data.flags & FLAG_BS != 0,
        user_handle,
    })
}

/// A small CBOR reader (RFC 8949) for what authenticators send: definite
/// lengths only, no tags, no floats, at most [`MAX_DEPTH`] levels and
/// [`MAX_ITEMS`] items, every length checked against the input.
pub mod cbor {
    pub const MAX_DEPTH: usize = 8;
    pub const MAX_ITEMS: usize = 512;

    /// A decoded item, borrowing strings and byte strings from the input.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Value<'a> {
        Int(i64),
        Bytes(&'a [u8]),
        Text(&'a str),
        Array(Vec<Value<'a>>),
        Map(Vec<(Value<'a>, Value<'a>)>),
        Bool(bool),
        Null,
    }

    struct Reader<'a> {
        input: &'a [u8],
        pos: usize,
        items: usize,
    }

    impl<'a> Reader<'a> {
        fn byte(&mut self) -> Result<u8, &'static str> {
            let b = *self.input.get(self.pos).ok_or("truncated")?;
            self.pos += 1;
            Ok(b)
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
            let end = self.pos.checked_add(n).ok_or("length overflow")?;
            let slice = self.input.get(self.pos..end).ok_or("truncated")?;
            self.pos = end;
            Ok(slice)
        }

        fn argument(&mut self, info: u8) -> Result<u64, &'static str> {
            Ok(match info {
                0..=23 => u64::from(info),
                24 => u64::from(self.byte()?),
                25 => {
                    let b = self.take(2)?;
                    u64::from(u16::from_be_bytes([b[0], b[1]]))
                }
                26 => {
                    let b = self.take(4)?;
                    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                }
                27 => {
                    let b = self.take(8)?;
                    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                }
                31 => return Err("indefinite lengths are not accepted"),
                _ => return Err("reserved additional information"),
            })
        }

        fn length(&mut self, info: u8) -> Result<usize, &'static str> {
            let n = self.argument(info)?;
            let n = usize::try_from(n).map_err(|_| "length overflow")?;
            if n > self.input.len() - self.pos {
                return Err("length beyond the input");
            }
            Ok(n)
        }

        fn value(&mut self, depth: usize) -> Result<Value<'a>, &'static str> {
            if depth > MAX_DEPTH {
                return Err("nested too deeply");
            }
            self.items += 1;
            if self.items > MAX_ITEMS {
                return Err("too many items");
            }
            let initial = self.byte()?;
            let major = initial >> 5;
            let info = initial & 0x1f;
            match major {
                0 => {
                    let n = self.argument(info)?;
                    Ok(Value::Int(
                        i64::try_from(n).map_err(|_| "integer out of range")?,
                    ))
                }
                1 => {
                    let n = self.argument(info)?;
                    let n = i64::try_from(n).map_err(|_| "integer out of range")?;
                    Ok(Value::Int(-1 - n))
                }
                2 => {
                    let n = self.length(info)?;
                    Ok(Value::Bytes(self.take(n)?))
                }
                3 => {
                    let n = self.length(info)?;
                    let raw = self.take(n)?;
                    Ok(Value::Text(
                        std::str::from_utf8(raw).map_err(|_| "text is not UTF-8")?,
                    ))
                }
                4 => {
                    let n = self.length(info)?;
                    let mut items = Vec::with_capacity(n.min(16));
                    for _ in 0..n {
                        items.push(self.value(depth + 1)?);
                    }
                    Ok(Value::Array(items))
                }
                5 => {
                    let n = self.length(info)?;
                    let mut entries: Vec<(Value<'a>, Value<'a>)> = Vec::with_capacity(n.min(16));
                    for _ in 0..n {
                        let key = self.value(depth + 1)?;
                        let value = self.value(depth + 1)?;
                        if entries.iter().any(|(k, _)| *k == key) {
                            return Err("duplicate map key");
                        }
                        entries.push((key, value));
                    }
                    Ok(Value::Map(entries))
                }
                6 => Err("tags are not accepted"),
                _ => match info {
                    20 => Ok(Value::Bool(false)),
                    21 => Ok(Value::Bool(true)),
                    22 => Ok(Value::Null),
                    _ => Err("unsupported simple value or float"),
                },
            }
        }
    }

    /// Reads one item from the front of `input`: the item and the bytes it
    /// took.
    pub fn parse(input: &[u8]) -> Result<(Value<'_>, usize), &'static str> {
        let mut reader = Reader {
            input,
            pos: 0,
            items: 0,
        };
        let value = reader.value(0)?;
        Ok((value, reader.pos))
    }

    /// Reads exactly one item that fills `input`.
    pub fn parse_all(input: &[u8]) -> Result<Value<'_>, &'static str> {
        let (value, used) = parse(input)?;
        if used != input.len() {
            return Err("trailing bytes");
        }
        Ok(value)
    }
}

/// A software authenticator for tests (P-256, real signatures): what a
/// browser's `navigator.credentials` would hand auth-js, serialised the way
/// auth-js sends it. Not used by the server.
#[cfg(any(test, feature = "test-authenticator"))]
pub mod soft {
    use super::b64url;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::{Value, json};
    use sha2::{Digest as _, Sha256};

    /// One credential on the authenticator.
    pub struct Authenticator {
        key: EcdsaKeyPair,
        rng: SystemRandom,
        pub credential_id: Vec<u8>,
        pub counter: u32,
        /// Flags sent: UP and UV by default.
        pub flags: u8,
        pub aaguid: [u8; 16],
    }

    /// CBOR head of `major` with argument `n`.
    pub fn head(major: u8, n: usize) -> Vec<u8> {
        let m = major << 5;
        match n {
            0..=23 => vec![m | n as u8],
            24..=0xff => vec![m | 24, n as u8],
            0x100..=0xffff => {
                let mut v = vec![m | 25];
                v.extend_from_slice(&(n as u16).to_be_bytes());
                v
            }
            _ => {
                let mut v = vec![m | 26];
                v.extend_from_slice(&(n as u32).to_be_bytes());
                v
            }
        }
    }

    pub fn text(s: &str) -> Vec<u8> {
        let mut v = head(3, s.len());
        v.extend_from_slice(s.as_bytes());
        v
    }

    pub fn bytes(b: &[u8]) -> Vec<u8> {
        let mut v = head(2, b.len());
        v.extend_from_slice(b);
        v
    }

    impl Default for Authenticator {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Authenticator {
        pub fn new() -> Authenticator {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .expect("a P-256 key");
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .expect("the P-256 key");
            let mut credential_id = vec![0u8; 16];
            ring::rand::SecureRandom::fill(&rng, &mut credential_id).expect("random bytes");
            Authenticator {
                key,
                rng,
                credential_id,
                counter: 0,
                flags: 0x01 | 0x04,
                aaguid: [7; 16],
            }
        }

        /// The credential's COSE key (ES256).
        pub fn cose_key(&self) -> Vec<u8> {
            let point = self.key.public_key().as_ref();
            let mut v = head(5, 5);
            v.extend_from_slice(&[0x01, 0x02]); // kty: EC2
            v.extend_from_slice(&[0x03, 0x26]); // alg: -7
            v.extend_from_slice(&[0x20, 0x01]); // crv: P-256
            v.push(0x21); // x
            v.extend_from_slice(&bytes(&point[1..33]));
            v.push(0x22); // y
            v.extend_from_slice(&bytes(&point[33..65]));
            v
        }

        pub fn sign(&self, message: &[u8]) -> Vec<u8> {
            self.key
                .sign(&self.rng, message)
                .expect("a signature")
                .as_ref()
                .to_vec()
        }

        /// `authenticatorData` for `rp_id`, with attested credential data
        /// when `attest`.
        pub fn auth_data(&self, rp_id: &str, attest: bool) -> Vec<u8> {
            let mut data = Sha256::digest(rp_id.as_bytes()).to_vec();
            data.push(self.flags | if attest { 0x40 } else { 0 });
            data.extend_from_slice(&self.counter.to_be_bytes());
            if attest {
                data.extend_from_slice(&self.aaguid);
                data.extend_from_slice(&(self.credential_id.len() as u16).to_be_bytes());
                data.extend_from_slice(&self.credential_id);
                data.extend_from_slice(&self.cose_key());
            }
            data
        }

        pub fn client_data(kind: &str, challenge_b64: &str, origin: &str) -> Vec<u8> {
            serde_json::to_vec(&json!({
                "type": kind,
                "challenge": challenge_b64,
                "origin": origin,
                "crossOrigin": false,
            }))
            .expect("JSON")
        }

        /// An attestation object of format `none` around `auth_data`.
        pub fn attestation_none(auth_data: &[u8]) -> Vec<u8> {
            let mut v = head(5, 3);
            v.extend_from_slice(&text("fmt"));
            v.extend_from_slice(&text("none"));
            v.extend_from_slice(&text("attStmt"));
            v.extend_from_slice(&head(5, 0));
            v.extend_from_slice(&text("authData"));
            v.extend_from_slice(&bytes(auth_data));
            v
        }

        /// `navigator.credentials.create()`'s answer, serialised, for a
        /// challenge (base64url) from the server.
        pub fn register(&self, rp_id: &str, origin: &str, challenge_b64: &str) -> Value {
            let client_data = Self::client_data("webauthn.create", challenge_b64, origin);
            let auth_data = self.auth_data(rp_id, true);
            self.registration_json(&client_data, &Self::attestation_none(&auth_data))
        }

        /// [`Authenticator::register`] with packed self-attestation.
        pub fn register_packed(&self, rp_id: &str, origin: &str, challenge_b64: &str) -> Value {
            let client_data = Self::client_data("webauthn.create", challenge_b64, origin);
            let auth_data = self.auth_data(rp_id, true);
            let mut signed = auth_data.clone();
            signed.extend_from_slice(&Sha256::digest(&client_data));
            let sig = self.sign(&signed);
            let mut v = head(5, 3);
            v.extend_from_slice(&text("fmt"));
            v.extend_from_slice(&text("packed"));
            v.extend_from_slice(&text("attStmt"));
            v.extend_from_slice(&head(5, 2));
            v.extend_from_slice(&text("alg"));
            v.push(0x26);
            v.extend_from_slice(&text("sig"));
            v.extend_from_slice(&bytes(&sig));
            v.extend_from_slice(&text("authData"));
            v.extend_from_slice(&bytes(&auth_data));
            self.registration_json(&client_data, &v)
        }

        pub fn registration_json(&self, client_data: &[u8], attestation: &[u8]) -> Value {
            let id = b64url(&self.credential_id);
            json!({
                "id": id,
                "rawId": id,
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(client_data),
                    "attestationObject": b64url(attestation),
                    "transports": ["internal"],
                },
                "clientExtensionResults": {},
                "authenticatorAttachment": "platform",
            })
        }

        /// `navigator.credentials.get()`'s answer, serialised; counts one
        /// use.
        pub fn assert(
            &mut self,
            rp_id: &str,
            origin: &str,
            challenge_b64: &str,
            user_handle: Option<&[u8]>,
        ) -> Value {
            self.counter += 1;
            let client_data = Self::client_data("webauthn.get", challenge_b64, origin);
            let auth_data = self.auth_data(rp_id, false);
            let mut signed = auth_data.clone();
            signed.extend_from_slice(&Sha256::digest(&client_data));
            let signature = self.sign(&signed);
            let id = b64url(&self.credential_id);
            json!({
                "id": id,
                "rawId": id,
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(&client_data),
                    "authenticatorData": b64url(&auth_data),
                    "signature": b64url(&signature),
                    "userHandle": user_handle.map(b64url),
                },
                "clientExtensionResults": {},
                "authenticatorAttachment": "platform",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::soft::{self, Authenticator};
    use super::*;

    const RP: &str = "app.example.com";
    const ORIGIN: &str = "https://app.example.com";

    fn rp(origins: &[String]) -> RelyingParty<'_> {
        RelyingParty { id: RP, origins }
    }

    fn origins() -> Vec<String> {
        vec![ORIGIN.to_owned()]
    }

    fn registration(value: serde_json::Value) -> RegistrationResponse {
        serde_json::from_value(value).unwrap()
    }

    fn assertion(value: serde_json::Value) -> AssertionResponse {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn registration_then_assertions_verify() {
        let origins = origins();
        let challenge = [9u8; 32];
        let mut a = Authenticator::new();
        let reg = registration(a.register(RP, ORIGIN, &b64url(&challenge)));
        let cred = verify_registration(&rp(&origins), &challenge, true, &reg).unwrap();
        assert_eq!(cred.credential_id, a.credential_id);
        assert_eq!(cred.algorithm, -7);
        assert_eq!(cred.sign_count, 0);
        assert!(cred.user_verified);
        assert_eq!(cred.transports, vec!["internal".to_owned()]);

        let challenge2 = [3u8; 32];
        let got = assertion(a.assert(RP, ORIGIN, &b64url(&challenge2), Some(b"user")));
        let verified =
            verify_assertion(&rp(&origins), &challenge2, true, &cred.public_key, 0, &got).unwrap();
        assert_eq!(verified.sign_count, 1);
        assert_eq!(verified.user_handle.as_deref(), Some(&b"user"[..]));
        // The same assertion again: the counter did not grow.
        let replay = verify_assertion(&rp(&origins), &challenge2, true, &cred.public_key, 1, &got)
            .unwrap_err();
        assert!(replay.0.contains("counter"), "{replay}");
    }

    #[test]
    fn packed_self_attestation_verifies_and_a_forged_one_does_not() {
        let origins = origins();
        let challenge = [1u8; 32];
        let a = Authenticator::new();
        let reg = registration(a.register_packed(RP, ORIGIN, &b64url(&challenge)));
        verify_registration(&rp(&origins), &challenge, false, &reg).unwrap();
        // Self-attestation signed by another key: refused.
        let other = Authenticator::new();
        let client_data =
            Authenticator::client_data("webauthn.create", &b64url(&challenge), ORIGIN);
        let auth_data = a.auth_data(RP, true);
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data));
        let mut object = soft::head(5, 3);
        object.extend_from_slice(&soft::text("fmt"));
        object.extend_from_slice(&soft::text("packed"));
        object.extend_from_slice(&soft::text("attStmt"));
        object.extend_from_slice(&soft::head(5, 2));
        object.extend_from_slice(&soft::text("alg"));
        object.push(0x26);
        object.extend_from_slice(&soft::text("sig"));
        object.extend_from_slice(&soft::bytes(&other.sign(&signed)));
        object.extend_from_slice(&soft::text("authData"));
        object.extend_from_slice(&soft::bytes(&auth_data));
        let forged = a.registration_json(&client_data, &object);
        let err = verify_registration(&rp(&origins), &challenge, false, &registration(forged))
            .unwrap_err();
        assert!(err.0.contains("signature"), "{err}");
    }

    #[test]
    fn refusals() {
        let origins = origins();
        let challenge = [5u8; 32];
        let a = Authenticator::new();
        let good = a.register(RP, ORIGIN, &b64url(&challenge));
        let check = |value: serde_json::Value, challenge: &[u8], uv: bool| {
            verify_registration(&rp(&origins), challenge, uv, &registration(value))
                .unwrap_err()
                .0
        };
        assert!(check(good.clone(), &[6u8; 32], false).contains("challenge"));
        let wrong_origin = a.register(RP, "https://evil.example.com", &b64url(&challenge));
        assert!(check(wrong_origin, &challenge, false).contains("origin"));
        let wrong_rp = a.register("evil.example.com", ORIGIN, &b64url(&challenge));
        assert!(check(wrong_rp, &challenge, false).contains("RP ID"));
        let mut no_up = Authenticator::new();
        no_up.flags = 0;
        let reg = no_up.register(RP, ORIGIN, &b64url(&challenge));
        assert!(check(reg, &challenge, false).contains("presence"));
        let mut no_uv = Authenticator::new();
        no_uv.flags = 0x01;
        let reg = no_uv.register(RP, ORIGIN, &b64url(&challenge));
        assert!(check(reg.clone(), &challenge, true).contains("verification"));
        verify_registration(&rp(&origins), &challenge, false, &registration(reg)).unwrap();
        let mut other_id = good.clone();
        other_id["id"] = json_str(&b64url(b"another id"));
        other_id["rawId"] = other_id["id"].clone();
        assert!(check(other_id, &challenge, false).contains("attested"));
        let mut get_type = good.clone();
        get_type["response"]["clientDataJSON"] = json_str(&b64url(&Authenticator::client_data(
            "webauthn.get",
            &b64url(&challenge),
            ORIGIN,
        )));
        assert!(check(get_type, &challenge, false).contains("type"));
        let mut junk = good.clone();
        junk["response"]["attestationObject"] = json_str(&b64url(&[0xa1, 0x61]));
        assert!(check(junk, &challenge, false).contains("attestationObject"));
        let mut not_b64 = good;
        not_b64["response"]["attestationObject"] = json_str("***");
        assert!(check(not_b64, &challenge, false).contains("base64url"));
    }

    #[test]
    fn assertion_refusals() {
        let origins = origins();
        let challenge = [5u8; 32];
        let mut a = Authenticator::new();
        let cred = verify_registration(
            &rp(&origins),
            &challenge,
            true,
            &registration(a.register(RP, ORIGIN, &b64url(&challenge))),
        )
        .unwrap();
        let mut got = a.assert(RP, ORIGIN, &b64url(&challenge), None);
        // A flipped signature byte.
        let mut sig =
            from_b64url(got["response"]["signature"].as_str().unwrap(), 1024, "").unwrap();
        let last = sig.len() - 1;
        sig[last] ^= 1;
        got["response"]["signature"] = json_str(&b64url(&sig));
        let err = verify_assertion(
            &rp(&origins),
            &challenge,
            true,
            &cred.public_key,
            0,
            &assertion(got),
        )
        .unwrap_err();
        assert!(err.0.contains("signature"), "{err}");
        // Another authenticator's signature under this credential's id.
        let mut b = Authenticator::new();
        b.credential_id = a.credential_id.clone();
        let theirs = b.assert(RP, ORIGIN, &b64url(&challenge), None);
        assert!(
            verify_assertion(
                &rp(&origins),
                &challenge,
                true,
                &cred.public_key,
                0,
                &assertion(theirs)
            )
            .is_err()
        );
        // Counter regression.
        a.counter = 10;
        let got = a.assert(RP, ORIGIN, &b64url(&challenge), None);
        let err = verify_assertion(
            &rp(&origins),
            &challenge,
            true,
            &cred.public_key,
            20,
            &assertion(got),
        )
        .unwrap_err();
        assert!(err.0.contains("counter"), "{err}");
        // Origin and RP ID.
        let got = a.assert(RP, "https://evil.example.com", &b64url(&challenge), None);
        assert!(
            verify_assertion(
                &rp(&origins),
                &challenge,
                true,
                &cred.public_key,
                0,
                &assertion(got)
            )
            .is_err()
        );
        let got = a.assert("example.com", ORIGIN, &b64url(&challenge), None);
        assert!(
            verify_assertion(
                &rp(&origins),
                &challenge,
                true,
                &cred.public_key,
                0,
                &assertion(got)
            )
            .is_err()
        );
    }

    #[test]
    fn cbor_reads_what_authenticators_send_and_refuses_the_rest() {
        use cbor::{Value, parse, parse_all};
        assert_eq!(parse_all(&[0x18, 0x64]).unwrap(), Value::Int(100));
        assert_eq!(parse_all(&[0x38, 0x63]).unwrap(), Value::Int(-100));
        assert_eq!(
            parse_all(&[0x43, 1, 2, 3]).unwrap(),
            Value::Bytes(&[1, 2, 3])
        );
        assert_eq!(parse_all(&[0x61, b'a']).unwrap(), Value::Text("a"));
        assert_eq!(parse(&[0xf5, 0xff]).unwrap(), (Value::Bool(true), 1));
        for bad in [
            &[][..],
            &[0x5f, 0x41, 0, 0xff],          // indefinite bytes
            &[0x5a, 0xff, 0xff, 0xff, 0xff], // length beyond the input
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // huge array
            &[0xc2, 0x41, 0],                // a tag
            &[0xfb, 0, 0, 0, 0, 0, 0, 0, 0], // a float
            &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // u64 beyond i64
            &[0x62, 0xff, 0xfe],             // bad UTF-8
            &[0xa2, 0x01, 0x01, 0x01, 0x02], // duplicate key
            &[0x1c],                         // reserved
        ] {
            assert!(parse_all(bad).is_err(), "{bad:?}");
        }
        let deep = [0x81u8; 20];
        assert!(parse(&deep).is_err());
        let mut many = vec![0x99, 0x03, 0xe8];
        many.extend(std::iter::repeat_n(0x00, 1000));
        assert_eq!(parse_all(&many).unwrap_err(), "too many items");
        assert!(parse_all(&[0x01, 0x02]).is_err(), "trailing bytes");
    }

    #[test]
    fn auth_data_bounds() {
        let a = Authenticator::new();
        let data = a.auth_data(RP, true);
        let parsed = parse_auth_data(&data).unwrap();
        assert_eq!(parsed.attested.unwrap().credential_id, &a.credential_id[..]);
        for cut in 0..data.len() {
            assert!(parse_auth_data(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = data.clone();
        trailing.push(0);
        assert!(parse_auth_data(&trailing).is_err());
        let mut long_id = a.auth_data(RP, false);
        long_id[32] |= 0x40;
        long_id.extend_from_slice(&[0; 16]);
        long_id.extend_from_slice(&2000u16.to_be_bytes());
        long_id.extend(std::iter::repeat_n(0, 2000));
        assert!(parse_auth_data(&long_id).is_err());
    }

    #[test]
    fn cose_keys() {
        let a = Authenticator::new();
        assert!(matches!(
            PublicKey::from_cose(&a.cose_key()).unwrap(),
            PublicKey::Es256(p) if p.len() == 65
        ));
        // kty OKP, alg -8, crv 6, x: 32 bytes.
        let mut ed = vec![0xa4, 0x01, 0x01, 0x03, 0x27, 0x20, 0x06, 0x21, 0x58, 0x20];
        ed.extend_from_slice(&[1; 32]);
        assert!(matches!(
            PublicKey::from_cose(&ed).unwrap(),
            PublicKey::Ed25519(_)
        ));
        // alg -35 (ES384) is not offered.
        let es384 = [0xa2, 0x01, 0x02, 0x03, 0x38, 0x22];
        assert!(PublicKey::from_cose(&es384).is_err());
        assert!(PublicKey::from_cose(&[0x80]).is_err());
    }

    fn json_str(s: &str) -> serde_json::Value {
        serde_json::Value::String(s.to_owned())
    }
}
