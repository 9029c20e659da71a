//! duplex's own tables in schema `duplex`: one file per table.

pub mod sync_log;
pub mod sync_state;
