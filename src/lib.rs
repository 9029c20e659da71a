//! duplex: bidirectional PostgreSQL replication controller for an on-site ("main") and a
//! cloud instance.
//!
//! - [`model`]: domain words shared by all: `Role`, `TableName`.
//! - [`secret`]: `SecretUrl`, `Secret`, redacted everywhere.
//! - [`config`]: settings from a TOML file and the environment, validated at once.
//! - [`pg`]: connections, session options, identifier quoting.
//! - [`store`]: every statement on schema `duplex`, one file per table, and its migrations.
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
pub mod model;
pub mod notify;
pub mod pg;
pub mod replication;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod text;
