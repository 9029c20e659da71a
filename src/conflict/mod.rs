//! Conflicts: both sides take writes and always converge.
//!
//! - [`diff`]: field-level diff of a conflict's two versions (pure).
//! - [`policy`]: the policies and how a table's effective policy is chosen (pure).
//! - [`triggers`]: the in-stream resolution installed on every replicated table, generated
//!   from the catalog (pure).
//! - [`scan`]: the verifying scanner's engine: compare both sides by key-range hashes,
//!   settle each difference by policy, repair the losing side only.
//! - [`resolve`]: manual resolution of an open conflict (`duplex conflicts resolve`).
//! - [`worker`]: housekeeping in `duplex run`: merge the peer's conflict log, empty the
//!   carrier, collect tombstones, prune the log, measure the clock offset.

pub mod diff;
pub mod policy;
pub mod resolve;
pub mod scan;
pub mod triggers;
pub mod worker;
