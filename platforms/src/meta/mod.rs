//! What Facebook Pages, Instagram and Threads have in common: they are all Meta's Graph API
//! ([`graph`]), and Instagram and Threads publish in two steps through a media container
//! ([`container`]).
//!
//! Each client keeps only what is its own: its host and version, which edges it posts to, its
//! validation rules, and the fields it reads.

pub mod container;
pub mod graph;
