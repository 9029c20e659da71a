//! Conflicts: both sides take writes and always converge.
//!
//! - [`policy`]: the policies and how a table's effective policy is chosen (pure).
//! - [`triggers`]: the in-stream resolution installed on every replicated table, generated
//!   from the catalog (pure).

pub mod policy;
pub mod triggers;
