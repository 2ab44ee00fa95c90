//! Images captured at enqueue: `media_blobs` holds each content once (by SHA-256), shared by every
//! share that carries it; `share_media` lists a share's images in order with their alt text. Both
//! are written in the share request's transaction (`share_create.rs`).

use chrono::{DateTime, Utc};

use super::{Result, Store, with_pool};

/// An image's bytes as captured, to be stored once.
#[derive(Debug, Clone)]
pub struct NewBlob {
    pub sha256: String,
    pub content_type: String,
    pub bytes: bytes::Bytes,
    pub width: u32,
    pub height: u32,
}

/// One image of one share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewShareMedia {
    pub sha256: String,
    pub alt: Option<String>,
    pub source_url: String,
}

/// One image of a share as stored; `bytes` is `None` once its blob was removed (the share
/// finished before).
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct ShareMediaRow {
    pub position: i32,
    pub sha256: String,
    pub alt: Option<String>,
    pub source_url: String,
    pub content_type: Option<String>,
    pub bytes: Option<Vec<u8>>,
    pub width: Option<i32>,
    pub height: Option<i32>,
}

/// The states in which a share may still be posted: its images must stay.
pub(super) const UNFINISHED: &str = "('queued', 'running', 'parked', 'outcome_unknown')";

pub(super) const UPSERT_BLOB: &str = "INSERT INTO media_blobs (sha256, content_type, bytes, size_bytes, width, height, created_at, last_used_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
     ON CONFLICT (sha256) DO UPDATE SET last_used_at = excluded.last_used_at";

pub(super) const INSERT_SHARE_MEDIA: &str = "INSERT INTO share_media (share_id, position, sha256, alt, source_url) \
     VALUES ($1, $2, $3, $4, $5)";

impl Store {
    /// A share's images, in order, with their bytes while the blob is kept.
    pub(crate) async fn share_media(&self, share_id: &str) -> Result<Vec<ShareMediaRow>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT m.position, m.sha256, m.alt, m.source_url, b.content_type, b.bytes, b.width, b.height \
             FROM share_media m LEFT JOIN media_blobs b ON b.sha256 = m.sha256 \
             WHERE m.share_id = $1 ORDER BY m.position",
            |p, sql| sqlx::query_as(sql).bind(share_id).fetch_all(p).await?
        ))
    }

    /// A share's images as requested, in order: (source URL, alt text).
    pub async fn share_media_list(&self, share_id: &str) -> Result<Vec<(String, Option<String>)>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT source_url, alt FROM share_media WHERE share_id = $1 ORDER BY position",
            |p, sql| sqlx::query_as(sql).bind(share_id).fetch_all(p).await?
        ))
    }

    /// One blob's type and bytes (the signed media URLs serve them).
    pub async fn media_blob(&self, sha256: &str) -> Result<Option<(String, Vec<u8>)>> {
        Ok(with_pool!(
            &self.pool,
            "SELECT content_type, bytes FROM media_blobs WHERE sha256 = $1",
            |p, sql| sqlx::query_as(sql).bind(sha256).fetch_optional(p).await?
        ))
    }

    /// Whether a blob is stored (tests, and the media sweep's report).
    pub async fn media_blob_exists(&self, sha256: &str) -> Result<bool> {
        let found: Option<i32> = with_pool!(
            &self.pool,
            "SELECT 1 FROM media_blobs WHERE sha256 = $1",
            |p, sql| sqlx::query_scalar(sql)
                .bind(sha256)
                .fetch_optional(p)
                .await?
        );
        Ok(found.is_some())
    }

    /// Deletes the blobs no unfinished share uses, among those last used (written by an
    /// enqueue) before `used_before`; answers how many. The cutoff keeps a blob that a request
    /// being written right now is about to use: its transaction bumps `last_used_at` first.
    pub async fn prune_media(&self, used_before: DateTime<Utc>) -> Result<u64> {
        let q = format!(
            "DELETE FROM media_blobs WHERE last_used_at < $1 AND NOT EXISTS (\
             SELECT 1 FROM share_media m JOIN shares s ON s.id = m.share_id \
             WHERE m.sha256 = media_blobs.sha256 AND s.state IN {UNFINISHED})"
        );
        Ok(with_pool!(&self.pool, &q, |p, sql| sqlx::query(sql)
            .bind(used_before)
            .execute(p)
            .await?
            .rows_affected()))
    }
}
