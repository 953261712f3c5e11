//! The service's two uses of its secret key, each with its own derived key:
//!
//! - **fingerprints** of webhook tokens (HMAC-SHA256): Aircall puts the token in every webhook
//!   body; we keep only its fingerprint and compare fingerprints in constant time;
//! - **encryption** of stored Aircall API tokens (AES-256-GCM, random 96-bit nonce, the
//!   connection id as associated data so a ciphertext cannot be moved to another connection).
//!
//! Nothing here logs, and no type here prints its key.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};

use crate::config::SecretKey;

/// Version tag of the ciphertext format, so the format can change without ambiguity.
const CIPHERTEXT_VERSION: &str = "v1";
const NONCE_BYTES: usize = 12;

/// The admin API's bearer token, kept as its SHA-256 digest: presented tokens are compared
/// digest to digest in constant time, so neither their content nor their length leaks.
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

impl AdminToken {
    pub fn new(token: &SecretString) -> Self {
        Self(Sha256::digest(token.expose_secret().as_bytes()).into())
    }

    /// Whether `presented` is the admin token.
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        subtle::ConstantTimeEq::ct_eq(&digest[..], &self.0[..]).into()
    }
}

/// Keys derived from the configured secret key.
pub struct Keys {
    fingerprint: SecretBox<[u8; 32]>,
    encryption: SecretBox<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

/// A stored value that cannot be decrypted: wrong key, tampering, or another connection's.
#[derive(Debug, thiserror::Error)]
#[error("stored credentials cannot be decrypted with the configured secret key")]
pub struct DecryptError;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl Keys {
    pub fn derive(secret: &SecretKey) -> Self {
        let root = secret.expose();
        Self {
            fingerprint: SecretBox::new(Box::new(hmac(
                root,
                &[b"aircall-ingest/webhook-token-fingerprint/v1"],
            ))),
            encryption: SecretBox::new(Box::new(hmac(
                root,
                &[b"aircall-ingest/credential-encryption/v1"],
            ))),
        }
    }

    /// The fingerprint stored in place of a webhook token.
    pub fn fingerprint(&self, token: &str) -> [u8; 32] {
        hmac(self.fingerprint.expose_secret(), &[token.as_bytes()])
    }

    /// Whether `token` is the one whose fingerprint is `expected`, in constant time.
    pub fn token_matches(&self, token: &str, expected: &[u8; 32]) -> bool {
        let actual = self.fingerprint(token);
        subtle::ConstantTimeEq::ct_eq(&actual[..], &expected[..]).into()
    }

    /// Encrypts an API token for the connection `context`.
    pub fn encrypt(&self, plaintext: &SecretString, context: &str) -> String {
        let cipher = Aes256Gcm::new(self.encryption.expose_secret().into());
        let nonce = Nonce::generate();
        let payload = Payload {
            msg: plaintext.expose_secret().as_bytes(),
            aad: context.as_bytes(),
        };
        // Encryption only fails for inputs over 64 GiB.
        let sealed = cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!(
            "{CIPHERTEXT_VERSION}:{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    /// Decrypts what [`Keys::encrypt`] produced for the same `context`.
    pub fn decrypt(&self, stored: &str, context: &str) -> Result<SecretString, DecryptError> {
        let encoded = stored
            .strip_prefix(CIPHERTEXT_VERSION)
            .and_then(|s| s.strip_prefix(':'))
            .ok_or(DecryptError)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| DecryptError)?;
        if bytes.len() < NONCE_BYTES {
            return Err(DecryptError);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| DecryptError)?;
        let cipher = Aes256Gcm::new(self.encryption.expose_secret().into());
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| DecryptError)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| DecryptError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn keys() -> Keys {
        let settings = Settings {
            mode: crate::config::Mode::Development,
            ..Settings::default()
        };
        Keys::derive(&settings.secrets().unwrap().secret_key)
    }

    #[test]
    fn tokens_round_trip_only_for_their_connection() {
        let keys = keys();
        let sealed = keys.encrypt(&SecretString::from("api-token-123"), "acme");
        assert!(!sealed.contains("api-token-123"));
        assert_eq!(
            keys.decrypt(&sealed, "acme").unwrap().expose_secret(),
            "api-token-123"
        );
        assert!(keys.decrypt(&sealed, "globex").is_err());
        assert_ne!(
            sealed,
            keys.encrypt(&SecretString::from("api-token-123"), "acme"),
            "fresh nonce"
        );
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(keys.decrypt(&tampered, "acme").is_err());
    }

    #[test]
    fn fingerprints_match_only_their_token() {
        let keys = keys();
        let fp = keys.fingerprint("webhook-token");
        assert!(keys.token_matches("webhook-token", &fp));
        assert!(!keys.token_matches("webhook-tokem", &fp));
        assert!(!keys.token_matches("", &fp));
    }
}
