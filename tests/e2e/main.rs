//! End-to-end tests of the whole system: the API and workers in-process (and as child processes
//! where a test kills one), real SQLite and Postgres stores, and local servers answering as each
//! platform documents.

mod support;

mod api;
mod bluesky_app_passwords;
mod bluesky_oauth;
mod checkpoints;
mod cli;
mod connect;
mod contract;
mod dashboards;
mod delivery;
mod followers;
mod keys;
mod lifecycle;
mod media;
mod observability;
mod ops;
mod outage;
mod platforms;
mod rate_limits;
mod share_edits;
mod sharing;
mod webhooks;
