//! duplex: bidirectional PostgreSQL replication controller for an on-site ("main") and a
//! cloud instance.
//!
//! - [`config`]: settings from a TOML file and the environment, validated at once.
//! - [`pg`]: connections, identifier quoting, migrations of schema `duplex`.
//! - [`store`]: duplex's own tables (`sync_log`, `sync_state`).
//! - [`replication`]: provisioning (`setup`), catalog queries, `check`, `status`.
//! - [`cli`]: the command-line interface.

pub mod cli;
pub mod config;
pub mod pg;
pub mod replication;
pub mod store;
