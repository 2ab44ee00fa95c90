//! Record keys. `app.bsky.feed.post` records are keyed by TID (`key: tid`; the PDS checks the
//! syntax). The key is derived from the share's idempotency key, so every attempt of a share
//! writes the same record and a repeat finds it: the TID's timestamp is the share id's UUIDv7
//! millisecond, its microsecond remainder and 10-bit clock id come from a SHA-256 of the whole id.
//! Two shares of one account created in the same millisecond collide with a chance of about one
//! in a million; a read-back compares the stored text, so a collision is refused rather than
//! reported as the other's post.

use sha2::{Digest, Sha256};
use uuid::Uuid;

const S32: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// Encodes a 64-bit TID value (top bit zero) as its 13-character base32-sortable form.
fn tid_encode(value: u64) -> String {
    (0..13)
        .map(|i| S32[((value >> (60 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// Whether `s` is a syntactically valid TID (the PDS's own check).
pub fn is_valid_tid(s: &str) -> bool {
    s.len() == 13
        && s.bytes().enumerate().all(|(i, b)| {
            let allowed: &[u8] = if i == 0 {
                b"234567abcdefghij"
            } else {
                &S32[..]
            };
            allowed.contains(&b)
        })
}

/// The record key of a share's post: the same for every attempt of that share. See the module
/// documentation for the layout.
pub fn record_key(idempotency_key: &str) -> String {
    let hash = Sha256::digest(idempotency_key.as_bytes());
    let h = u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"));
    let hex = idempotency_key
        .rsplit('_')
        .next()
        .unwrap_or(idempotency_key);
    let micros = match Uuid::try_parse(hex)
        .ok()
        .filter(|u| u.get_version_num() == 7)
    {
        Some(u) => {
            let (secs, nanos) = u
                .get_timestamp()
                .expect("a UUIDv7 has a timestamp")
                .to_unix();
            let millis = secs * 1000 + u64::from(nanos / 1_000_000);
            millis * 1000 + h % 1000
        }
        // Not a share id: the timestamp bits come from the hash too (still a valid TID).
        None => h >> 11,
    };
    let clock_id = (h >> 20) & 0x3ff;
    tid_encode(((micros & ((1 << 53) - 1)) << 10) | clock_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_are_stable_valid_tids_in_the_share_ids_millisecond() {
        let id = format!("shr_{}", Uuid::now_v7().simple());
        let k = record_key(&id);
        assert_eq!(k, record_key(&id));
        assert!(is_valid_tid(&k), "{k}");
        assert_ne!(k, record_key(&format!("shr_{}", Uuid::now_v7().simple())));
        assert!(is_valid_tid(&record_key("not-a-share-id")));
        // Decoding the TID gives back the UUIDv7's millisecond.
        let v = k.bytes().fold(0u64, |acc, b| {
            (acc << 5) | S32.iter().position(|&c| c == b).unwrap() as u64
        });
        let uuid = Uuid::try_parse(id.strip_prefix("shr_").unwrap()).unwrap();
        let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
        assert_eq!((v >> 10) / 1000, secs * 1000 + u64::from(nanos / 1_000_000));
    }

    #[test]
    fn tid_encoding_matches_the_reference() {
        // @atproto/common-web: TID.fromTime(1_700_000_000_000_000, 0)
        assert_eq!(tid_encode(1_700_000_000_000_000 << 10), "3ke6kg3wk2222");
        assert!(!is_valid_tid("kke6kg3wk2222"));
        assert!(!is_valid_tid("3ke6kg3wk222"));
    }
}
