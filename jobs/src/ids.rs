//! Prefixed, time-ordered ids (`shr_0190...`): readable in logs, sortable, never guessable.

use uuid::Uuid;

pub const TENANT: &str = "ten";
pub const API_KEY: &str = "key";
pub const CONNECTION: &str = "con";
pub const SHARE: &str = "shr";
pub const ATTEMPT: &str = "att";
pub const WEBHOOK_ENDPOINT: &str = "whe";
pub const EVENT: &str = "evt";
pub const DELIVERY: &str = "whd";

/// A new id with the given prefix, a UUIDv7 in simple hex form.
pub fn new(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::now_v7().simple())
}

/// Whether `id` looks like one of ours with that prefix (a cheap check before a store lookup).
pub fn is_valid(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn new_ids_carry_their_prefix_and_validate() {
        let id = super::new(super::SHARE);
        assert!(super::is_valid(super::SHARE, &id));
        assert!(!super::is_valid(super::CONNECTION, &id));
        assert!(!super::is_valid(super::SHARE, "shr_nothex"));
    }
}
