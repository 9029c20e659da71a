//! duplex's own tables in schema `duplex`: every statement on them lives here, one file
//! per table, the SQL as `const`s next to the row types and the functions that run it.
//!
//! - [`change_meta`]: the carrier of what each change was based on (emptied every cycle).
//! - [`controller`]: the one `duplex run` beside this database: its lock and who holds it.
//! - [`conflict_log`]: one entry per conflict; listing, manual resolution marks, counts.
//! - [`migrations`]: the numbered migrations and their runner.
//! - [`object_location`]: verified copies in this side's object store (key -> local URL).
//! - [`replicated_table`]: the tables `duplex setup` set up to replicate.
//! - [`resolution`]: what `duplex setup` installed on each replicated table.
//! - [`scan_state`]: the verifying scanner's progress per table (incremental passes).
//! - [`schema_migrations`]: which migrations are applied.
//! - [`storage_queue`]: files local rows reference that this side's store lacks.
//! - [`sync_log`]: what duplex did, alerts and transitions.
//! - [`sync_state`]: the single state row (role, heartbeat, pause).
//! - [`tombstone`]: deleted incarnations of keys, and their garbage collection.

pub mod change_meta;
pub mod conflict_log;
pub mod controller;
pub mod migrations;
pub mod object_location;
pub mod replicated_table;
pub mod resolution;
pub mod scan_state;
pub mod schema_migrations;
pub mod storage_queue;
pub mod sync_log;
pub mod sync_state;
pub mod tombstone;
