//! Importing one call: the rules (pure), the recording download, storage, the per-call lease,
//! and the `worker` role that runs an [`Importer`] for every job on the import queue. The
//! outcome records it writes live in [`crate::connections::outcomes`].

pub mod download;
pub mod job;
pub mod lease;
pub mod metadata;
pub mod rules;
pub mod storage;
pub mod worker;

pub use job::{Handled, Importer, JobError, Report};
pub use storage::Storage;
