//! Standard Webhooks signatures (https://www.standardwebhooks.com): `webhook-signature` is a
//! space-separated list of `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed by the
//! base64 part of a `whsec_...` secret. After a rotation the previous secret signs too, so a
//! receiver that still holds it keeps verifying.
//!
//! HMAC is `ring`'s, which the TLS stack already builds: nothing is added to the build.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ring::hmac;
use secrecy::{ExposeSecret, SecretString};

const PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and 32 random bytes in base64 (the spec asks for 24 to 64).
pub fn new_secret() -> SecretString {
    SecretString::from(format!(
        "{PREFIX}{}",
        B64.encode(rand::random::<[u8; 32]>())
    ))
}

/// The key of a `whsec_...` secret, `None` if it is not one.
fn key(secret: &SecretString) -> Option<hmac::Key> {
    let raw = secret.expose_secret();
    let bytes = B64.decode(raw.strip_prefix(PREFIX).unwrap_or(raw)).ok()?;
    Some(hmac::Key::new(hmac::HMAC_SHA256, &bytes))
}

/// The `webhook-signature` header's value: one `v1,` signature per secret, in order.
pub fn signature(secrets: &[SecretString], id: &str, timestamp: i64, body: &str) -> String {
    let content = format!("{id}.{timestamp}.{body}");
    secrets
        .iter()
        .filter_map(key)
        .map(|k| {
            format!(
                "v1,{}",
                B64.encode(hmac::sign(&k, content.as_bytes()).as_ref())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_as_the_reference_libraries_do() {
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = signature(
            &[secret],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotated_endpoint_signs_with_both_secrets() {
        let (new, old) = (new_secret(), new_secret());
        let sig = signature(&[new, old], "evt_1", 1, "{}");
        assert_eq!(sig.split(' ').filter(|s| s.starts_with("v1,")).count(), 2);
    }
}
