//! Iceberg tables for Meltwater (DESIGN.md §7): catalogs, a parallel scan, and writes
//! that commit once per job run with the job's id in the snapshot summary.
//!
//! Apache `iceberg` gives the spec types, FileIO, the reader (deletes applied), the data
//! file writers and the catalogs. This crate adds what a job needs on top: a DataFusion
//! [`catalog::IcebergCatalogProvider`] exposing namespaces as schemas, a scan that reads
//! file groups in parallel ([`scan::IcebergScanExec`]), a partitioned parallel writer
//! ([`write::IcebergWriteExec`]) whose data files wait in [`commit::JobCommits`] until the
//! runtime commits them, and `CREATE TABLE` support with partition transforms.

pub mod catalog;
pub mod commit;
pub mod config;
pub mod error;
pub mod predicate;
pub mod scan;
pub mod schema;
pub mod table;
pub mod write;

pub use catalog::IcebergCatalogProvider;
pub use commit::{CommitSummary, JobCommits, JobIdentity};
pub use config::{open_catalog, open_catalog_readonly, IcebergCatalogConfig, IcebergCatalogKind};
pub use error::{IcebergError, Result};
pub use table::IcebergTable;

/// Snapshot summary key: the job that wrote a snapshot.
pub const SUMMARY_JOB_ID: &str = "meltwater.job-id";
/// Snapshot summary key: the run (batch) or checkpoint (stream) that wrote a snapshot.
pub const SUMMARY_RUN_ID: &str = "meltwater.run-id";
