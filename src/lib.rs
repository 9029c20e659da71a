//! duplex: bidirectional PostgreSQL replication controller for an on-site ("main") and a
//! cloud instance.
//!
//! - [`model`]: domain words shared by all: `Role`, `TableName`, `Severity`.
//! - [`secret`]: `SecretUrl`, `Secret`, redacted everywhere.
//! - [`config`]: settings from a TOML file and the environment, validated at once.
//! - [`pg`]: connections, session options, identifier quoting.
//! - [`store`]: every statement on schema `duplex`, one file per table, and its migrations.
//! - [`conflict`]: conflict policies and the in-stream resolution installed on every
//!   replicated table.
//! - [`replication`]: provisioning (`setup`), catalog queries, one health snapshot
//!   (`health`), pure rules (`rules`), the state machine, the monitor worker, `check`,
//!   `status`.
//! - [`alerts`]: the alert engine: raised once per incident, cleared once.
//! - [`notify`]: webhook and e-mail notifications, rate-limited, and their worker.
//! - [`mirror`]: the object-storage mirror: stores, inventory, verified transfers, worker.
//! - [`http`]: health, status, control and metrics API.
//! - [`retention`]: the worker that prunes `duplex.sync_log` past its retention.
//! - [`app`]: `duplex run`: workers, HTTP server, shutdown.
//! - [`shutdown`]: signals and the worker registry.
//! - [`cli`]: the command-line interface.
//! - [`text`]: text helpers (error chains).

pub mod alerts;
pub mod app;
pub mod cli;
pub mod config;
pub mod conflict;
pub mod http;
pub mod mirror;
pub mod model;
pub mod notify;
pub mod pg;
pub mod replication;
pub mod retention;
pub mod secret;
pub mod shutdown;
pub mod store;
pub mod text;
