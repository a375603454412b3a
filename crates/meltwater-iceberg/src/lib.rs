//! Iceberg tables for Meltwater (DESIGN.md §7): catalogs, a parallel scan, and writes
//! that commit once per job run with the job's id in the snapshot summary.
//!
//! Apache `iceberg` gives the spec types, FileIO, the reader (deletes applied), the data
//! file writers and the catalogs. This crate adds what a job needs on top: a DataFusion
//! [`catalog::IcebergCatalogProvider`] exposing namespaces as schemas, a scan that reads
//! file groups in parallel ([`scan::IcebergScanExec`]), a partitioned parallel writer
//! ([`write::IcebergWriteExec`]) whose data files wait in [`commit::JobCommits`] until the
//! runtime commits them, and `CREATE TABLE` support with partition transforms.
//! Streaming jobs write through [`stream::IcebergStreamWriter`] (two-phase: files are
//! prepared on a checkpoint barrier and committed with [`stream::commit_checkpoint`]
//! once the checkpoint is complete, idempotently per job and checkpoint id).

pub mod catalog;
pub mod codec;
pub mod commit;
pub mod committer;
pub mod config;
mod deletes;
pub mod error;
pub mod maintain;
pub mod merge;
pub mod position_delete;
pub mod predicate;
mod rest;
pub mod rewrite;
pub mod scan;
pub mod schema;
pub mod snapshot;
pub mod source;
pub mod storage;
pub mod stream;
pub mod table;
pub mod upsert;
pub mod write;

pub use catalog::IcebergCatalogProvider;
pub use commit::{CommitSummary, JobCommits, JobIdentity};
pub use committer::{CommitOutcome, LakeCatalog};
pub use config::{
    open_catalog, open_catalog_readonly, IcebergCatalogConfig, IcebergCatalogKind,
    RestCatalogConfig,
};
pub use error::{IcebergError, Result};
pub use snapshot::AddedFiles;
pub use source::IcebergSource;
pub use stream::{
    commit_checkpoint, commit_checkpoint_to, last_committed_checkpoint, IcebergStreamWriter,
    PendingDataFile,
};
pub use table::IcebergTable;
pub use upsert::UpsertWriter;

/// Snapshot summary key: the job that wrote a snapshot.
pub const SUMMARY_JOB_ID: &str = "meltwater.job-id";
/// Snapshot summary key: the run of a batch job that wrote a snapshot.
pub const SUMMARY_RUN_ID: &str = "meltwater.run-id";
/// Snapshot summary key: the checkpoint of a streaming job that wrote a snapshot.
pub const SUMMARY_CHECKPOINT_ID: &str = "meltwater.checkpoint-id";
