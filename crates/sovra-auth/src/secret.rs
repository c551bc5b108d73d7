//! The auth service's own key: 32 random bytes kept in `<data_dir>/auth.key`
//! (mode 0600, made on first start). Sub-keys derived from it (HMAC-SHA256
//! with a label) seal TOTP secrets at rest (AES-256-GCM, bound to the
//! factor's id) and derive each refresh token's successor from the token
//! itself, so that a retried refresh can be answered with the same token
//! while only hashes are stored.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use ring::aead;
use sha2::Sha256;

/// Marks a sealed value (plaintext TOTP secrets are base32, which has no
/// colon).
const SEALED_PREFIX: &str = "sovra1:";
const NONCE_LEN: usize = 12;

/// A secret that must not reach a log (`Debug` shows nothing of it).
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redacted(..)")
    }
}

/// The service key, and older keys that still open what they sealed.
#[derive(Clone)]
pub struct ServiceKey {
    key: [u8; 32],
    older: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey(..)")
    }
}

impl ServiceKey {
    pub fn from_bytes(key: [u8; 32]) -> ServiceKey {
        ServiceKey {
            key,
            older: Vec::new(),
        }
    }

    /// The key derived from a secret every instance shares (the configured
    /// `jwt.secret`), so that instances without a common data directory
    /// agree; `self` still opens what it sealed before.
    pub fn shared(self, secret: &str) -> ServiceKey {
        let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("hmac key"));
        mac.update(b"sovra-auth/service-key");
        let mut older = vec![self.key];
        older.extend(self.older);
        ServiceKey {
            key: mac.finalize().into_bytes().into(),
            older,
        }
    }

    /// The key written as 64 hex digits (as in a key file or an option).
    pub fn from_hex(text: &str) -> Option<ServiceKey> {
        parse_hex(text.trim()).map(ServiceKey::from_bytes)
    }

    /// This key, still opening what `older` (and the keys it keeps)
    /// sealed; it seals with its own key only.
    pub fn with_older(mut self, older: &ServiceKey) -> ServiceKey {
        for key in std::iter::once(&older.key).chain(&older.older) {
            if *key != self.key && !self.older.contains(key) {
                self.older.push(*key);
            }
        }
        self
    }

    /// This key without the older ones: what it opens was sealed under
    /// the current key.
    pub fn current(&self) -> ServiceKey {
        ServiceKey::from_bytes(self.key)
    }

    /// A fresh random key (nothing persisted).
    pub fn random() -> ServiceKey {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        ServiceKey::from_bytes(key)
    }

    /// Reads the key in `path` (64 hex digits), creating it with mode 0600
    /// when missing.
    pub fn load_or_create(path: &Path) -> Result<ServiceKey, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => parse_hex(text.trim())
                .map(ServiceKey::from_bytes)
                .ok_or_else(|| {
                    format!(
                        "{} is damaged (expected 64 hex digits); restore it from a backup (TOTP factors and refresh retries depend on it)",
                        path.display()
                    )
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key = ServiceKey::random();
                write_new_private(path, format!("{}\n", hex(&key.key)).as_bytes())
                    .map_err(|err| format!("writing {}: {err}", path.display()))?;
                // Another process may have won the race: use what is there.
                if let Ok(text) = std::fs::read_to_string(path)
                    && let Some(bytes) = parse_hex(text.trim())
                {
                    return Ok(ServiceKey::from_bytes(bytes));
                }
                Ok(key)
            }
            Err(err) => Err(format!("reading {}: {err}", path.display())),
        }
    }

    /// A sub-key of `key` for one purpose.
    fn derive(key: &[u8; 32], label: &str) -> [u8; 32] {
        // HMAC takes keys of any length.
        let mut mac =
            <Hmac<Sha256>>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac key"));
        mac.update(b"sovra-auth/");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn aead_key(key: &[u8; 32]) -> Option<aead::LessSafeKey> {
        let unbound =
            aead::UnboundKey::new(&aead::AES_256_GCM, &Self::derive(key, "totp-secret")).ok()?;
        Some(aead::LessSafeKey::new(unbound))
    }

    /// Seals `plaintext` for the row identified by `context` (the factor's
    /// id): `sovra1:` + base64url(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Option<String> {
        let key = Self::aead_key(&self.key)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let mut buffer = plaintext.to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(context),
            &mut buffer,
        )
        .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Some(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// Opens a value made by [`ServiceKey::seal`] for the same `context`.
    pub fn open(&self, sealed: &str, context: &[u8]) -> Option<Vec<u8>> {
        let body = sealed.strip_prefix(SEALED_PREFIX)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .ok()?;
        if bytes.len() < NONCE_LEN + aead::AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        // The tag tells which key sealed it: the current one, else an older.
        std::iter::once(&self.key)
            .chain(&self.older)
            .find_map(|key| {
                let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
                let mut buffer = rest.to_vec();
                let plain = Self::aead_key(key)?
                    .open_in_place(nonce, aead::Aad::from(context), &mut buffer)
                    .ok()?;
                Some(plain.to_vec())
            })
    }

    /// HMAC-SHA-256 of `data` under a key derived from this one for
    /// `purpose` (signed `state` parameters).
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let key = Self::derive(&self.key, purpose);
        let mut mac =
            <Hmac<Sha256>>::new_from_slice(&key).unwrap_or_else(|_| unreachable!("hmac key"));
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The refresh token that succeeds `parent`: 40 alphanumerics derived
    /// from it under this key, so the same parent always yields the same
    /// child and nobody without the key can compute it.
    pub fn refresh_child(&self, parent: &str) -> String {
        const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let key = Self::derive(&self.key, "refresh-child");
        let mut out = String::with_capacity(40);
        let mut block = 0u8;
        while out.len() < 40 {
            let mut mac =
                <Hmac<Sha256>>::new_from_slice(&key).unwrap_or_else(|_| unreachable!("hmac key"));
            mac.update(&[block]);
            mac.update(parent.as_bytes());
            for byte in mac.finalize().into_bytes() {
                // Rejection sampling keeps the characters uniform.
                if byte < 248 && out.len() < 40 {
                    out.push(char::from(ALNUM[usize::from(byte % 62)]));
                }
            }
            block = block.wrapping_add(1);
        }
        out
    }
}

/// Whether a stored TOTP secret is sealed (rather than legacy plaintext).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Creates `path` with mode 0600; never replaces an existing file.
fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(err) => return Err(err),
    };
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_key_and_the_row() {
        let key = ServiceKey::random();
        let sealed = key.seal(b"JBSWY3DPEHPK3PXP", b"factor-1").unwrap();
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(key.open(&sealed, b"factor-1").unwrap(), b"JBSWY3DPEHPK3PXP");
        // Another row, another key, a damaged value: nothing.
        assert_eq!(key.open(&sealed, b"factor-2"), None);
        assert_eq!(ServiceKey::random().open(&sealed, b"factor-1"), None);
        let mut damaged = sealed.clone();
        damaged.pop();
        damaged.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(key.open(&damaged, b"factor-1"), None);
        assert_eq!(key.open("sovra1:", b"factor-1"), None);
        assert_eq!(key.open("JBSWY3DPEHPK3PXP", b"factor-1"), None);
        // Two seals of one secret differ (fresh nonces).
        assert_ne!(sealed, key.seal(b"JBSWY3DPEHPK3PXP", b"factor-1").unwrap());
        assert!(!is_sealed("JBSWY3DPEHPK3PXP"));
    }

    #[test]
    fn a_shared_key_agrees_across_instances_and_opens_older_seals() {
        let one = ServiceKey::random();
        let two = ServiceKey::random();
        let sealed_before = one.seal(b"OLD", b"f").unwrap();
        let one = one.shared("a-jwt-secret-shared-by-every-instance");
        let two = two.shared("a-jwt-secret-shared-by-every-instance");
        let sealed = one.seal(b"NEW", b"f").unwrap();
        assert_eq!(two.open(&sealed, b"f").unwrap(), b"NEW");
        assert_eq!(one.refresh_child("t"), two.refresh_child("t"));
        // What the file key sealed before still opens on its instance.
        assert_eq!(one.open(&sealed_before, b"f").unwrap(), b"OLD");
        assert_eq!(two.open(&sealed_before, b"f"), None);
    }

    #[test]
    fn older_keys_open_and_the_current_one_seals() {
        let old = ServiceKey::from_hex(&"ab".repeat(32)).unwrap();
        assert!(ServiceKey::from_hex("abc").is_none());
        assert!(ServiceKey::from_hex(&"zz".repeat(32)).is_none());
        let sealed_old = old.seal(b"s", b"c").unwrap();
        let new = ServiceKey::random().with_older(&old);
        assert_eq!(new.open(&sealed_old, b"c").unwrap(), b"s");
        assert_eq!(new.current().open(&sealed_old, b"c"), None);
        let sealed_new = new.seal(b"t", b"c").unwrap();
        assert_eq!(new.current().open(&sealed_new, b"c").unwrap(), b"t");
        assert_eq!(old.open(&sealed_new, b"c"), None);
    }

    #[test]
    fn refresh_children_are_deterministic_per_key() {
        let key = ServiceKey::from_bytes([7; 32]);
        let child = key.refresh_child("parent-token");
        assert_eq!(child.len(), 40);
        assert!(child.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(child, key.refresh_child("parent-token"));
        assert_ne!(child, key.refresh_child("parent-tokem"));
        assert_ne!(
            child,
            ServiceKey::from_bytes([8; 32]).refresh_child("parent-token")
        );
    }

    #[test]
    fn the_key_file_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.key");
        let first = ServiceKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = ServiceKey::load_or_create(&path).unwrap();
        assert_eq!(first.key, again.key);
        std::fs::write(&path, "not hex").unwrap();
        let err = ServiceKey::load_or_create(&path).unwrap_err();
        assert!(err.contains("damaged"), "{err}");
    }
}
