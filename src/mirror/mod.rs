//! The object-storage mirror: every file a local row references exists, verified, in
//! this side's store. Each controller pulls what its own store lacks from the peer's store.
//!
//! - [`store`]: one object store of either kind ([`s3`]: S3-compatible through
//!   `aws-sdk-s3`; [`fs`]: a directory), with writes that become visible only when
//!   published.
//! - [`key`]: object keys and expected hashes from rows (pure checks).
//! - [`inventory`]: referenced files merged with the local store's listing: what is
//!   missing goes into `duplex.storage_queue`.
//! - [`throttle`]: `MAX_TRANSFER_RATE`, one token bucket for all transfers.
//! - [`transfer`]: one verified copy, with retries.
//! - [`cycle`]: one scan plus transfers (`duplex storage sync`, the worker).
//! - [`worker`]: the `storage_mirror` worker of `duplex run`.
//!
//! Object keys are location-independent: replicated rows hold the same key on both sides,
//! each store adds its own prefix, and where a verified copy lives locally is recorded
//! in `duplex.object_location`, never in a replicated row (docs/storage.md).

pub mod cycle;
pub mod fs;
pub mod inventory;
pub mod key;
pub mod s3;
pub mod store;
pub mod throttle;
pub mod transfer;
pub mod worker;

/// Marks unfinished copies in a directory store (never listed, never a valid key).
pub const TEMP_MARK: &str = ".duplex-tmp.";
