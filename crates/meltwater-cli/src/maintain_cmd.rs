//! `meltwater maintain ...`: table maintenance.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use datafusion::common::DFSchema;
use datafusion::prelude::SessionContext;
use iceberg::{NamespaceIdent, TableIdent};
use meltwater_iceberg::maintain::compact;
use meltwater_iceberg::predicate::to_iceberg_predicate;
use meltwater_iceberg::schema::arrow_schema;

use crate::catalog_cmd::{find_catalog, load, split_name};
use crate::load_catalogs;
use crate::report::{plural, size};

#[derive(Subcommand)]
pub enum MaintainCommand {
    /// Merge each partition's data files and the deletes that apply to them into new
    /// files with the same rows (a `replace` snapshot).
    Compact {
        /// `catalog.namespace.table`.
        table: String,
        /// Compact only the files that can hold rows matching this condition (column
        /// comparisons with constants, e.g. `day >= DATE '2026-01-01'`).
        #[arg(long = "where", value_name = "CONDITION")]
        filter: Option<String>,
    },
    /// Remove the snapshots older than a duration (keeping the newest ones) and delete the
    /// files only they used.
    Expire {
        /// `catalog.namespace.table`.
        table: String,
        /// Age of the oldest snapshot to keep, e.g. `7 d`, `12 h`, `0 s`.
        #[arg(long, value_name = "DURATION")]
        older_than: String,
        /// Keep at least this many of the newest snapshots.
        #[arg(long, default_value_t = 1)]
        retain_last: usize,
    },
}

pub async fn run(catalog_file: Option<&Path>, command: MaintainCommand) -> Result<()> {
    let catalogs = load_catalogs(catalog_file)?.iceberg;
    match command {
        MaintainCommand::Compact { table, filter } => {
            let (c, ns, t) = split_name(&table)?;
            let catalog = meltwater_iceberg::open_catalog(find_catalog(&catalogs, &c)?).await?;
            let loaded = load(catalog.as_ref(), &table, ns.clone(), t.clone()).await?;
            let predicate = match &filter {
                None => None,
                Some(sql) => {
                    let schema = arrow_schema(loaded.metadata().current_schema())?;
                    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
                    let expr = SessionContext::new()
                        .parse_sql_expr(sql, &df_schema)
                        .with_context(|| format!("--where {sql}"))?;
                    match to_iceberg_predicate(&[expr]) {
                        Some(p) => Some(p),
                        None => bail!(
                            "--where {sql}: only comparisons of columns with constants (combined with AND, OR, NOT, IN, IS NULL) can select files"
                        ),
                    }
                }
            };
            println!(
                "compacting {table}{}",
                filter
                    .as_ref()
                    .map(|f| format!(" where {f}"))
                    .unwrap_or_default()
            );
            let ident = TableIdent::new(NamespaceIdent::new(ns), t);
            let report = compact(&Arc::clone(&catalog), &table, &ident, predicate).await?;
            match &report.commit {
                None => {
                    println!("nothing to compact: every partition has one data file and no deletes")
                }
                Some(commit) => {
                    println!(
                        "rewrote {} in {}: {} and {} removed, {} added ({} → {})",
                        plural(report.rows, "row"),
                        plural(report.partitions as u64, "partition"),
                        plural(report.data_files_removed as u64, "data file"),
                        plural(report.delete_files_removed as u64, "delete file"),
                        plural(report.data_files_added as u64, "data file"),
                        size(report.bytes_before),
                        size(report.bytes_after),
                    );
                    if let Some(id) = commit.snapshot_id {
                        println!("snapshot {id} (replace)");
                    }
                }
            }
            Ok(())
        }
        MaintainCommand::Expire {
            table,
            older_than,
            retain_last,
        } => {
            let (c, ns, t) = split_name(&table)?;
            let catalog = meltwater_iceberg::open_catalog(find_catalog(&catalogs, &c)?).await?;
            load(catalog.as_ref(), &table, ns.clone(), t.clone()).await?;
            let age = meltwater_connectors::parse_duration_ms(&older_than)
                .map_err(|e| anyhow::anyhow!("--older-than {older_than}: {e}"))?;
            let cutoff = chrono::Utc::now().timestamp_millis() - age as i64;
            println!(
                "expiring snapshots of {table} older than {older_than}, keeping the newest {retain_last}"
            );
            let ident = TableIdent::new(NamespaceIdent::new(ns), t);
            let report =
                meltwater_iceberg::maintain::expire(&catalog, &table, &ident, cutoff, retain_last)
                    .await?;
            println!(
                "expired {} ({} kept); deleted {} only they used ({})",
                plural(report.snapshots_expired as u64, "snapshot"),
                report.snapshots_kept,
                plural(report.files_deleted as u64, "file"),
                size(report.bytes_deleted)
            );
            Ok(())
        }
    }
}
