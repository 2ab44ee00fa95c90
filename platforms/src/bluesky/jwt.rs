//! ES256 keys and compact JWS: the client's `private_key_jwt` assertions and the per-session DPoP
//! proofs. Built on `ring` (already compiled for rustls), so the AT Protocol's one algorithm costs
//! no new crate. Keys are kept as PKCS#8 (what `ring` generates and reads, and what
//! `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes), base64url-encoded.

use std::{fmt, sync::Arc};

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// base64url(SHA-256(s)): PKCE challenges, DPoP `ath`, JWK thumbprints.
pub fn sha256_b64(s: impl AsRef<[u8]>) -> String {
    b64(Sha256::digest(s.as_ref()))
}

/// A fresh random value for `jti`, `state` and PKCE verifiers.
pub fn random_token(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    b64(v)
}

#[derive(Debug, thiserror::Error)]
#[error("not an ES256 (P-256) private key in PKCS#8: {0}")]
pub struct KeyError(String);

/// A P-256 key pair. `Debug` shows the key id only.
#[derive(Clone)]
pub struct EsKey {
    pair: Arc<EcdsaKeyPair>,
    pkcs8: SecretString,
    kid: String,
}

impl fmt::Debug for EsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsKey").field("kid", &self.kid).finish()
    }
}

impl EsKey {
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("the system RNG works");
        Self::from_pkcs8_der(doc.as_ref()).expect("ring reads its own keys")
    }

    /// Reads base64 (standard or URL-safe, padded or not) PKCS#8 DER.
    pub fn from_pkcs8(encoded: &str) -> Result<Self, KeyError> {
        let clean: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
        let der = URL_SAFE_NO_PAD
            .decode(clean.trim_end_matches('='))
            .or_else(|_| STANDARD.decode(&clean))
            .map_err(|e| KeyError(e.to_string()))?;
        Self::from_pkcs8_der(&der)
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
                .map_err(|e| KeyError(e.to_string()))?;
        let mut key = Self {
            pair: Arc::new(pair),
            pkcs8: SecretString::from(b64(der)),
            kid: String::new(),
        };
        key.kid = key.thumbprint();
        Ok(key)
    }

    /// The private key as stored (base64url PKCS#8).
    pub fn pkcs8(&self) -> &SecretString {
        &self.pkcs8
    }

    /// The key id: its RFC 7638 thumbprint, so it needs no configuration and never changes.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn coordinates(&self) -> (String, String) {
        // ring's public key is the uncompressed point: 0x04 ‖ x ‖ y.
        let point = self.pair.public_key().as_ref();
        (b64(&point[1..33]), b64(&point[33..65]))
    }

    /// The public JWK without metadata (what a DPoP proof carries).
    pub fn public_jwk(&self) -> Value {
        let (x, y) = self.coordinates();
        json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y })
    }

    /// The public JWK as published in a JWKS: with `kid`, `alg` and `use`.
    pub fn published_jwk(&self) -> Value {
        let mut jwk = self.public_jwk();
        jwk["kid"] = self.kid.clone().into();
        jwk["alg"] = "ES256".into();
        jwk["use"] = "sig".into();
        jwk
    }

    /// RFC 7638: SHA-256 of the required members in lexicographic order, base64url.
    pub fn thumbprint(&self) -> String {
        let (x, y) = self.coordinates();
        sha256_b64(format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
        ))
    }

    /// A compact JWS (ES256) of `claims` under `header` (whose `alg` is set here).
    pub fn sign(&self, mut header: Value, claims: &Value) -> String {
        header["alg"] = "ES256".into();
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("signing with a valid key works");
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

/// Whether `stored` (a DPoP key as stored) reads as a key.
pub fn read_key(stored: &SecretString) -> Result<EsKey, KeyError> {
    EsKey::from_pkcs8(stored.expose_secret())
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;

    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | openssl pkcs8 -topk8
    /// -nocrypt -outform DER | base64 -w0`
    const OPENSSL_KEY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg7lqnNZPPChcm+Bj25yS2opKWL69xcX19sOigyAhBAkWhRANCAAS6hnQPt/rrjJMhlnwusf0/y4PcDuUKzUzYnwXtmf1S1Jda3ackTCoAfGHO66+6BCPhsaHQmJ94+EDLu8ErVTzX";

    #[test]
    fn keys_round_trip_sign_and_verify() {
        let key = EsKey::generate();
        let again = EsKey::from_pkcs8(key.pkcs8().expose_secret()).unwrap();
        assert_eq!(key.kid(), again.kid());
        let jws = key.sign(json!({ "typ": "dpop+jwt" }), &json!({ "a": 1 }));
        let (input, sig) = jws.rsplit_once('.').unwrap();
        let jwk = key.public_jwk();
        let mut point = vec![4u8];
        for c in ["x", "y"] {
            point.extend(URL_SAFE_NO_PAD.decode(jwk[c].as_str().unwrap()).unwrap());
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();
        assert!(!format!("{key:?}").contains(key.pkcs8().expose_secret()));
    }

    #[test]
    fn openssl_pkcs8_keys_are_read() {
        let key = EsKey::from_pkcs8(OPENSSL_KEY).unwrap();
        assert_eq!(key.public_jwk()["crv"], "P-256");
        assert!(EsKey::from_pkcs8("bm90IGEga2V5").is_err());
    }

    #[test]
    fn the_kid_is_the_rfc_7638_thumbprint() {
        // The same key's thumbprint as Node's crypto computes it (JWK export, then SHA-256 of
        // {crv,kty,x,y}).
        let key = EsKey::from_pkcs8(OPENSSL_KEY).unwrap();
        assert_eq!(key.kid(), "9e-szcOPpj_TAFJ3-uKbBDEjF3lf7ceUeS0GUtIlIFc");
    }
}
