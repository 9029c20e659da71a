//! duplex: bidirectional PostgreSQL replication controller for an on-site ("main") and a
//! cloud instance.
//!
//! - [`config`]: settings from a TOML file and the environment, validated at once.
//! - [`pg`]: connections, identifier quoting, migrations of schema `duplex`.
//! - [`store`]: duplex's own tables (`sync_log`, `sync_state`).
//! - [`replication`]: provisioning (`setup`), catalog queries, `check`, `status`, the
//!   monitor and the connection state machine.
//! - [`alerts`]: alert rules, raised once per incident.
//! - [`notify`]: webhook and e-mail notifications, rate-limited.
//! - [`http`]: health, status, control and metrics API.
//! - [`app`]: `duplex run`: workers, HTTP server, shutdown.
//! - [`shutdown`]: signals and the worker registry.
//! - [`cli`]: the command-line interface.

pub mod alerts;
pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod notify;
pub mod pg;
pub mod replication;
pub mod shutdown;
pub mod store;
