//! Tokens at rest: AES-256-GCM with a random 96-bit nonce, the key id stored in the envelope beside
//! the ciphertext, and associated data binding each ciphertext to its table, row and column, so a
//! token copied to another account's row fails to decrypt.
//!
//! Envelope: `v1.<key id>.<base64(nonce || ciphertext || tag)>`. The first key of the ring
//! encrypts; every key decrypts, so keys rotate without downtime (`herald keys rotate`).

use std::fmt;

use aes_gcm::{
    Aes256Gcm, Key, Nonce,
    aead::{Aead, AeadCore, KeyInit, OsRng, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no encryption key configured")]
    NoKeys,
    #[error("encryption key `{0}` is malformed: want `<id>:<base64 of 32 bytes>`")]
    BadKey(String),
    #[error("key id `{0}` appears twice")]
    DuplicateKey(String),
    #[error("ciphertext was encrypted with key `{0}`, which is not configured")]
    UnknownKey(String),
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext does not decrypt for this row and column")]
    Tampered,
}

/// Where a ciphertext lives; it becomes the AEAD associated data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot<'a> {
    pub table: &'a str,
    pub row: &'a str,
    pub column: &'a str,
}

impl Slot<'_> {
    fn aad(&self) -> Vec<u8> {
        format!("herald/{}/{}/{}", self.table, self.row, self.column).into_bytes()
    }
}

struct RingKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The configured keys. `Debug` shows only key ids.
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "key_ids",
                &self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeyRing {
    /// Parses `id:base64key[,id:base64key...]`; the first key encrypts.
    pub fn parse(spec: &str) -> Result<Self, VaultError> {
        let mut keys: Vec<RingKey> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, b64) = part
                .split_once(':')
                .ok_or_else(|| VaultError::BadKey(redact(part)))?;
            let id = id.trim();
            let valid_id = !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            let bytes = B64
                .decode(b64.trim())
                .map_err(|_| VaultError::BadKey(id.to_owned()))?;
            if !valid_id || bytes.len() != 32 {
                return Err(VaultError::BadKey(id.to_owned()));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(VaultError::DuplicateKey(id.to_owned()));
            }
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes));
            keys.push(RingKey {
                id: id.to_owned(),
                cipher,
            });
        }
        if keys.is_empty() {
            return Err(VaultError::NoKeys);
        }
        Ok(Self { keys })
    }

    /// A fresh key in the ring's spec format, with an id from the current time.
    pub fn generate_spec() -> String {
        let key = Aes256Gcm::generate_key(OsRng);
        let id = format!("k{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
        format!("{id}:{}", B64.encode(key))
    }

    pub fn primary_id(&self) -> &str {
        &self.keys[0].id
    }

    pub(crate) fn encrypt(
        &self,
        slot: Slot<'_>,
        plaintext: &SecretString,
    ) -> Result<String, VaultError> {
        let key = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = slot.aad();
        let ct = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.expose_secret().as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::Malformed)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!("v1.{}.{}", key.id, B64.encode(blob)))
    }

    pub(crate) fn decrypt(
        &self,
        slot: Slot<'_>,
        envelope: &str,
    ) -> Result<SecretString, VaultError> {
        let (key_id, blob) = parse_envelope(envelope)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| VaultError::UnknownKey(key_id.to_owned()))?;
        if blob.len() < 12 + 16 {
            return Err(VaultError::Malformed);
        }
        let (nonce, ct) = blob.split_at(12);
        let aad = slot.aad();
        let pt = key
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            .map_err(|_| VaultError::Tampered)?;
        let text = String::from_utf8(pt).map_err(|_| VaultError::Malformed)?;
        Ok(SecretString::from(text))
    }

    /// Whether the envelope is already under the primary key (rotation skips those).
    #[cfg(test)]
    pub(crate) fn is_current(&self, envelope: &str) -> bool {
        parse_envelope(envelope).is_ok_and(|(id, _)| id == self.keys[0].id)
    }
}

fn parse_envelope(envelope: &str) -> Result<(&str, Vec<u8>), VaultError> {
    let rest = envelope.strip_prefix("v1.").ok_or(VaultError::Malformed)?;
    let (key_id, b64) = rest.split_once('.').ok_or(VaultError::Malformed)?;
    let blob = B64.decode(b64).map_err(|_| VaultError::Malformed)?;
    Ok((key_id, blob))
}

fn redact(part: &str) -> String {
    part.chars().take(4).chain("…".chars()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(row: &str) -> Slot<'_> {
        Slot {
            table: "connections",
            row,
            column: "access_token",
        }
    }

    #[test]
    fn a_token_round_trips_and_never_shows_in_the_envelope() {
        let ring = KeyRing::parse(&KeyRing::generate_spec()).unwrap();
        let env = ring
            .encrypt(slot("con_1"), &SecretString::from("s3cret-token"))
            .unwrap();
        assert!(!env.contains("s3cret"));
        assert_eq!(
            ring.decrypt(slot("con_1"), &env).unwrap().expose_secret(),
            "s3cret-token"
        );
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_fails_to_decrypt() {
        let ring = KeyRing::parse(&KeyRing::generate_spec()).unwrap();
        let env = ring
            .encrypt(slot("con_1"), &SecretString::from("t"))
            .unwrap();
        assert!(matches!(
            ring.decrypt(slot("con_2"), &env),
            Err(VaultError::Tampered)
        ));
    }

    #[test]
    fn every_key_decrypts_and_the_first_encrypts() {
        let old = KeyRing::generate_spec().replacen('k', "old", 1);
        let new = KeyRing::generate_spec().replacen('k', "new", 1);
        let before = KeyRing::parse(&old).unwrap();
        let env = before.encrypt(slot("c"), &SecretString::from("t")).unwrap();
        let after = KeyRing::parse(&format!("{new},{old}")).unwrap();
        assert_eq!(after.decrypt(slot("c"), &env).unwrap().expose_secret(), "t");
        assert!(!after.is_current(&env));
        let re = after.encrypt(slot("c"), &SecretString::from("t")).unwrap();
        assert!(after.is_current(&re));
    }

    #[test]
    fn malformed_keys_name_the_key_but_not_its_bytes() {
        let err = KeyRing::parse("k1:c2hvcnQ=").unwrap_err().to_string();
        assert!(err.contains("k1") && !err.contains("c2hvcnQ"));
        assert!(
            format!("{:?}", KeyRing::parse(&KeyRing::generate_spec()).unwrap()).contains("key_ids")
        );
    }
}
