//! The two-step publish of Instagram and Threads: a media container is created (after the
//! publishing quota is read), waited on until `FINISHED`, saved as the share's checkpoint, then
//! published, and the post's permalink read. Only the publish has an effect.

use std::time::Duration;

use serde::Deserialize;

use super::graph::{Graph, checked_id};
use crate::{
    error::{LimitScope, PlatformError},
    types::{PostRequest, Published},
};

/// How long a share waits for a container to become publishable. The default (10 checks a second
/// apart) stays well inside the share timeout; a container still `IN_PROGRESS` after that is a
/// transient failure, and the retry creates a fresh container (an unpublished one just expires).
#[derive(Debug, Clone, Copy)]
pub struct ContainerWait {
    pub checks: u32,
    pub interval: Duration,
}

impl Default for ContainerWait {
    fn default() -> Self {
        Self {
            checks: 10,
            interval: Duration::from_secs(1),
        }
    }
}

#[derive(Deserialize)]
struct ContainerStatus {
    status_code: Option<String>,
    status: Option<String>,
    error_message: Option<String>,
}

impl ContainerStatus {
    /// Instagram reports the state in `status_code`, Threads in `status`.
    fn state(&self) -> &str {
        self.status_code
            .as_deref()
            .or(self.status.as_deref())
            .unwrap_or_default()
    }
}

async fn container_status(
    graph: &Graph,
    container_id: &str,
    fields: &str,
    access_token: &str,
) -> Result<ContainerStatus, PlatformError> {
    graph
        .fields("container_status", container_id, fields, access_token)
        .await
}

/// Polls a container (`GET /{container}?fields=…`) until it is `FINISHED`: at most `wait.checks`
/// times, the first at once (images and text are usually ready immediately). `ERROR` is a refusal
/// of the content; `EXPIRED`, an unknown state, or `IN_PROGRESS` past the bound are transient.
pub async fn wait_for_container(
    graph: &Graph,
    container_id: &str,
    fields: &str,
    access_token: &str,
    wait: ContainerWait,
) -> Result<(), PlatformError> {
    for check in 0..wait.checks {
        if check > 0 {
            tokio::time::sleep(wait.interval).await;
        }
        let c = container_status(graph, container_id, fields, access_token).await?;
        let state = c.state();
        match state {
            "FINISHED" => return Ok(()),
            "IN_PROGRESS" | "" => {}
            "ERROR" => {
                let detail = c
                    .error_message
                    .as_deref()
                    .or(c.status.as_deref())
                    .unwrap_or(state);
                return Err(PlatformError::Rejected {
                    status: 0,
                    reason: format!("the media container failed: {detail}"),
                });
            }
            other => {
                return Err(PlatformError::Transient {
                    status: None,
                    reason: format!("the media container is {other}; a new one will be created"),
                });
            }
        }
    }
    Err(PlatformError::Transient {
        status: None,
        reason: format!(
            "the media container was still in progress after {} checks",
            wait.checks
        ),
    })
}

#[derive(Deserialize)]
struct QuotaAnswer {
    #[serde(default)]
    data: Vec<Quota>,
}

#[derive(Deserialize)]
struct Quota {
    quota_usage: Option<u64>,
    config: Option<QuotaConfig>,
}

#[derive(Deserialize)]
struct QuotaConfig {
    quota_total: Option<u64>,
}

/// The quota window rolls over 24 hours and Meta does not say when a slot frees up: wait a while
/// rather than a whole day.
const QUOTA_WAIT: Duration = Duration::from_secs(3600);

/// Reads a publishing quota (`content_publishing_limit` on Instagram, `threads_publishing_limit`
/// on Threads; `{"data":[{"quota_usage","config":{"quota_total","quota_duration"}}]}`) and answers
/// `RateLimited` when it is spent. Meta's documents disagree on the Instagram total (25, 50, 100),
/// so it is read rather than assumed. The check is advisory: if the read itself fails for any reason
/// other than dead credentials or throttling, the share goes ahead and the publish call decides.
pub async fn check_quota(
    graph: &Graph,
    quota_edge: &str,
    access_token: &str,
) -> Result<(), PlatformError> {
    match graph
        .fields::<QuotaAnswer>(
            "publishing_limit",
            quota_edge,
            "quota_usage,config",
            access_token,
        )
        .await
    {
        Ok(a) => {
            let spent = a.data.iter().any(|q| {
                match (q.quota_usage, q.config.as_ref().and_then(|c| c.quota_total)) {
                    (Some(used), Some(total)) => used >= total,
                    _ => false,
                }
            });
            if spent {
                Err(PlatformError::RateLimited {
                    retry_after: Some(QUOTA_WAIT),
                    scope: LimitScope::Account,
                })
            } else {
                Ok(())
            }
        }
        Err(e @ (PlatformError::Unauthorized { .. } | PlatformError::RateLimited { .. })) => Err(e),
        Err(_) => Ok(()),
    }
}

#[derive(Deserialize)]
pub struct Created {
    pub id: String,
}

#[derive(Deserialize)]
struct Permalink {
    permalink: Option<String>,
}

/// The two-step publish of Instagram and Threads: where the container is created, how its state
/// is read, and where it is published.
#[derive(Debug, Clone, Copy)]
pub struct ContainerFlow<'a> {
    /// The edge that publishes a container (`{ig-user}/media_publish`, `{user}/threads_publish`).
    pub publish_edge: &'a str,
    /// The fields that carry the container's state (`status_code,status`, `status,error_message`).
    pub status_fields: &'a str,
    pub wait: ContainerWait,
}

/// Publishes a share through a media container, resuming the one an earlier attempt saved.
///
/// A new container is saved as the share's checkpoint before it is published, so a retry after a
/// lost publish answer finds it again instead of creating a second one. A saved container is read
/// first: `PUBLISHED` means the lost answer did post, and read-back (`read_back`) finds the post;
/// any other state means it was not published, and since Meta publishes a container only once,
/// publishing it now cannot post twice. Only an `EXPIRED` container (24 hours unpublished) is
/// replaced by a new one. `create` makes a container (the quota check comes first) and answers
/// its id; it and `read_back` are awaited only when needed.
pub async fn share_through_container(
    graph: &Graph,
    flow: ContainerFlow<'_>,
    access_token: &str,
    post: &PostRequest,
    create: impl Future<Output = Result<String, PlatformError>>,
    read_back: impl Future<Output = Result<Option<Published>, PlatformError>>,
) -> Result<Published, PlatformError> {
    if let Some(saved) = post.checkpoint.saved.as_deref() {
        let container = checked_id(saved)?;
        let status = container_status(graph, container, flow.status_fields, access_token).await?;
        match status.state() {
            "PUBLISHED" => {
                return read_back.await?.ok_or_else(|| PlatformError::OutcomeUnknown {
                    reason: "the saved media container was published, but read-back does not list the post yet".into(),
                });
            }
            "EXPIRED" => {}
            _ => return publish_container(graph, flow, container, access_token).await,
        }
    }
    let created = create.await?;
    let container = checked_id(&created)?;
    post.checkpoint.save(container).await?;
    publish_container(graph, flow, container, access_token).await
}

/// Waits for a created container, publishes it, and reads the post's permalink. Creating a
/// container posts nothing; the publish call is the create, so a lost answer to it is an unknown
/// outcome.
pub async fn publish_container(
    graph: &Graph,
    flow: ContainerFlow<'_>,
    container_id: &str,
    access_token: &str,
) -> Result<Published, PlatformError> {
    wait_for_container(
        graph,
        container_id,
        flow.status_fields,
        access_token,
        flow.wait,
    )
    .await?;
    let form = [
        ("creation_id", container_id),
        ("access_token", access_token),
    ];
    let media: Created = graph
        .post_form("share", true, flow.publish_edge, &form)
        .await?;
    let post_url = match checked_id(&media.id) {
        Ok(m) => permalink(graph, m, access_token).await,
        Err(_) => None,
    };
    Ok(Published {
        post_id: media.id,
        post_url,
        app_budget: None,
    })
}

/// The public URL of a just-published post. Best effort: the post exists whatever this answers.
pub async fn permalink(graph: &Graph, media_id: &str, access_token: &str) -> Option<String> {
    graph
        .fields::<Permalink>("permalink", media_id, "permalink", access_token)
        .await
        .ok()
        .and_then(|p| p.permalink)
}

/// How one platform names the fields of its image containers.
#[derive(Debug, Clone, Copy)]
pub struct ImageContainers<'a> {
    /// Where containers are created (`{ig-user}/media`, `{user}/threads`).
    pub edge: &'a str,
    /// The post's text: `caption` (Instagram), `text` (Threads).
    pub text_field: &'a str,
    /// Threads names every container's type (`media_type=IMAGE`); Instagram infers an image from
    /// `image_url`.
    pub names_image_type: bool,
}

/// The container to publish for a share with images. One image is one image container with the
/// text; several are a carousel: each image an item container (`is_carousel_item=true`, no
/// text), each waited on until `FINISHED`, then a `CAROUSEL` container naming them in order
/// (`children`) with the text. Meta fetches each image itself, from Herald's signed URL of the
/// bytes captured at enqueue. Nothing here publishes anything.
pub async fn create_image_container(
    graph: &Graph,
    c: ImageContainers<'_>,
    flow: ContainerFlow<'_>,
    access_token: &str,
    text: &str,
    images: &[crate::media::Image],
) -> Result<String, PlatformError> {
    let image_form = |image: &'_ crate::media::Image, item: bool| {
        let url = image
            .public_url
            .clone()
            .ok_or_else(|| PlatformError::Rejected {
                status: 0,
                reason: "the image has no public URL for Meta to fetch".into(),
            })?;
        let mut form: Vec<(&str, String)> = vec![("image_url", url)];
        if c.names_image_type {
            form.push(("media_type", "IMAGE".into()));
        }
        if item {
            form.push(("is_carousel_item", "true".into()));
        } else {
            form.push((c.text_field, text.to_owned()));
        }
        if let Some(alt) = &image.alt {
            form.push(("alt_text", alt.clone()));
        }
        form.push(("access_token", access_token.to_owned()));
        Ok::<_, PlatformError>(form)
    };
    if let [image] = images {
        return create_container(graph, c.edge, &image_form(image, false)?).await;
    }
    let mut children = Vec::with_capacity(images.len());
    for image in images {
        let child = create_container(graph, c.edge, &image_form(image, true)?).await?;
        wait_for_container(graph, &child, flow.status_fields, access_token, flow.wait).await?;
        children.push(child);
    }
    let children = children.join(",");
    let form = [
        ("media_type", "CAROUSEL".to_owned()),
        ("children", children),
        (c.text_field, text.to_owned()),
        ("access_token", access_token.to_owned()),
    ];
    create_container(graph, c.edge, &form).await
}

async fn create_container(
    graph: &Graph,
    edge: &str,
    form: &[(&str, String)],
) -> Result<String, PlatformError> {
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let created: Created = graph
        .post_form("create_container", false, edge, &form)
        .await?;
    checked_id(&created.id).map(str::to_owned)
}
