//! `meltwater catalog ...`: list tables, describe one, list its snapshots.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use meltwater_iceberg::open_catalog_readonly as open_catalog;

use crate::load_catalogs;

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// List every table of every catalog.
    Tables,
    /// Columns, partitioning, properties and current snapshot of `catalog.namespace.table`.
    Describe { table: String },
    /// The snapshots of `catalog.namespace.table`, oldest first.
    Snapshots { table: String },
}

pub(crate) fn split_name(name: &str) -> Result<(String, String, String)> {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [c, ns, t] if !c.is_empty() && !ns.is_empty() && !t.is_empty() => {
            Ok((c.to_string(), ns.to_string(), t.to_string()))
        }
        _ => bail!("'{name}' is not a table name of the form catalog.namespace.table"),
    }
}

pub(crate) async fn load(
    catalog: &dyn iceberg::Catalog,
    name: &str,
    ns: String,
    t: String,
) -> Result<iceberg::table::Table> {
    match catalog
        .load_table(&TableIdent::new(NamespaceIdent::new(ns), t))
        .await
    {
        Ok(t) => Ok(t),
        Err(e)
            if matches!(
                e.kind(),
                iceberg::ErrorKind::TableNotFound | iceberg::ErrorKind::NamespaceNotFound
            ) =>
        {
            bail!("no table {name}; `meltwater catalog tables` lists the tables")
        }
        Err(e) => Err(e).with_context(|| format!("loading {name}")),
    }
}

/// The catalog named `name` among `catalogs`, or an error listing them.
pub(crate) fn find_catalog<'a>(
    catalogs: &'a [meltwater_iceberg::IcebergCatalogConfig],
    name: &str,
) -> Result<&'a meltwater_iceberg::IcebergCatalogConfig> {
    catalogs.iter().find(|c| c.name == name).ok_or_else(|| {
        anyhow!(
            "no catalog '{name}'; catalogs: {}",
            catalogs
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

pub async fn run(catalog_file: Option<&Path>, command: CatalogCommand) -> Result<()> {
    let catalogs = load_catalogs(catalog_file)?.iceberg;
    let find = |name: &str| find_catalog(&catalogs, name);
    match command {
        CatalogCommand::Tables => {
            for c in &catalogs {
                let catalog = open_catalog(c).await?;
                for ns in catalog
                    .list_namespaces(None)
                    .await
                    .with_context(|| format!("listing {}", c.name))?
                {
                    for t in catalog
                        .list_tables(&ns)
                        .await
                        .with_context(|| format!("listing {}", c.name))?
                    {
                        println!("{}.{}.{}", c.name, ns.to_url_string(), t.name());
                    }
                }
            }
            Ok(())
        }
        CatalogCommand::Describe { table } => {
            let (c, ns, t) = split_name(&table)?;
            let catalog = open_catalog(find(&c)?).await?;
            let loaded = load(catalog.as_ref(), &table, ns, t).await?;
            let m = loaded.metadata();
            println!("table     {table}");
            println!("location  {}", m.location());
            println!("format    v{}", m.format_version() as u8);
            println!("columns");
            for f in m.current_schema().as_struct().fields() {
                let null = if f.required { " NOT NULL" } else { "" };
                println!("  {:<24} {}{null}", f.name, f.field_type);
            }
            let spec = m.default_partition_spec();
            if spec.fields().is_empty() {
                println!("partitioning  none");
            } else {
                println!("partitioning");
                for p in spec.fields() {
                    let source = m
                        .current_schema()
                        .name_by_field_id(p.source_id)
                        .unwrap_or("?");
                    println!("  {:<24} {}({source})", p.name, p.transform);
                }
            }
            if !m.properties().is_empty() {
                println!("properties");
                let mut props: Vec<_> = m.properties().iter().collect();
                props.sort();
                for (k, v) in props {
                    println!("  {k} = {v}");
                }
            }
            match m.current_snapshot() {
                Some(s) => println!("current snapshot  {}", s.snapshot_id()),
                None => println!("current snapshot  none (empty table)"),
            }
            Ok(())
        }
        CatalogCommand::Snapshots { table } => {
            let (c, ns, t) = split_name(&table)?;
            let catalog = open_catalog(find(&c)?).await?;
            let loaded = load(catalog.as_ref(), &table, ns, t).await?;
            let m = loaded.metadata();
            let mut snapshots: Vec<_> = m.snapshots().collect();
            snapshots.sort_by_key(|s| (s.sequence_number(), s.timestamp_ms()));
            if snapshots.is_empty() {
                println!("{table} has no snapshots");
            }
            println!(
                "{:<20} {:<20} {:<24} {:<10} {:>12} job",
                "snapshot", "parent", "committed at", "operation", "added rows"
            );
            for s in snapshots {
                let summary = s.summary();
                let p = &summary.additional_properties;
                let when = chrono::DateTime::from_timestamp_millis(s.timestamp_ms())
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default();
                let job = match (
                    p.get(meltwater_iceberg::SUMMARY_JOB_ID),
                    p.get(meltwater_iceberg::SUMMARY_RUN_ID),
                ) {
                    (Some(j), Some(r)) => format!("{j} (run {r})"),
                    (Some(j), None) => j.clone(),
                    _ => String::new(),
                };
                println!(
                    "{:<20} {:<20} {:<24} {:<10} {:>12} {job}",
                    s.snapshot_id(),
                    s.parent_snapshot_id()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    when,
                    summary.operation.as_str(),
                    p.get("added-records").map(String::as_str).unwrap_or("0"),
                );
            }
            Ok(())
        }
    }
}
