//! The platform clients against the local servers in `herald_platforms::testing`, which answer
//! as each platform documents, error bodies and rate-limit headers included. One module per
//! client.

mod bluesky;
mod facebook;
mod instagram;
mod linkedin;
mod mastodon;
mod media;
mod meta_images;
mod threads;
mod x;
