//! `meltwater catalog ...`: list tables, describe one, list its snapshots; sample a Kafka
//! topic and suggest its DDL and catalog entry.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use iceberg::{Catalog, NamespaceIdent, TableIdent};
use meltwater_connectors::kafka::infer::{
    sample_topic, InferredType, SampleFormat, SchemaInference, TopicSample,
};
use meltwater_iceberg::open_catalog_readonly as open_catalog;
use meltwater_plan::catalogs::{cluster_entry_toml, topic_entry_toml, KafkaCluster};

use crate::load_catalogs;

#[derive(Subcommand)]
pub enum CatalogCommand {
    /// List every table of every catalog, and the registered Kafka topics.
    Tables,
    /// Columns, partitioning, properties and current snapshot of `catalog.namespace.table`;
    /// the DDL of a registered Kafka topic `cluster.table`.
    Describe { table: String },
    /// The snapshots of `catalog.namespace.table`, oldest first.
    Snapshots { table: String },
    /// Read messages from the start of a Kafka topic and print a CREATE TABLE for it,
    /// with the catalog entry that registers it.
    InferSchema {
        /// A Kafka cluster of the catalog file (`[kafka.NAME]`).
        #[arg(long, required_unless_present = "bootstrap_servers")]
        cluster: Option<String>,
        /// The brokers, instead of (or overriding those of) `--cluster`.
        #[arg(long, value_name = "HOST:PORT[,...]")]
        bootstrap_servers: Option<String>,
        #[arg(long)]
        topic: String,
        /// How many messages to read at most, spread over the partitions.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        samples: u32,
        /// How message values are encoded.
        #[arg(long, value_enum, default_value = "json")]
        format: FormatArg,
        /// The table name (default: the topic's name made a SQL name).
        #[arg(long)]
        table: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Json,
    Csv,
}

/// How long infer-schema waits for the brokers, and for the messages.
const INFER_TIMEOUT: Duration = Duration::from_secs(10);

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
    let all = load_catalogs(catalog_file)?;
    let catalogs = all.iceberg;
    let find = |name: &str| find_catalog(&catalogs, name);
    match command {
        CatalogCommand::InferSchema {
            cluster,
            bootstrap_servers,
            topic,
            samples,
            format,
            table,
        } => {
            let format = match format {
                FormatArg::Json => SampleFormat::Json,
                FormatArg::Csv => SampleFormat::Csv,
            };
            infer_schema(
                &all.kafka,
                cluster.as_deref(),
                bootstrap_servers.as_deref(),
                &topic,
                samples as usize,
                format,
                table,
            )
            .await
        }
        CatalogCommand::Describe { table } if table.split('.').count() == 2 => {
            let (c, t) = table.split_once('.').expect("two parts");
            let cluster = find_cluster(&all.kafka, c)?;
            let topic = cluster
                .topics
                .iter()
                .find(|r| r.table == t)
                .ok_or_else(|| {
                    anyhow!(
                        "no table {table}: the Kafka cluster '{c}' registers {}",
                        list_or_none(cluster.topics.iter().map(|r| r.table.as_str()))
                    )
                })?;
            println!("-- registered in the catalog file (kafka.{c}.topics.{t})");
            println!("{};", topic.ddl);
            Ok(())
        }
        CatalogCommand::Tables => {
            for c in &all.kafka {
                for t in &c.topics {
                    println!("{}.{}", c.name, t.table);
                }
            }
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

fn list_or_none<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The Kafka cluster `name` of the catalog file, or an error listing them.
fn find_cluster<'a>(clusters: &'a [KafkaCluster], name: &str) -> Result<&'a KafkaCluster> {
    clusters.iter().find(|c| c.name == name).ok_or_else(|| {
        anyhow!(
            "no Kafka cluster '{name}' in the catalog file; clusters: {}",
            list_or_none(clusters.iter().map(|c| c.name.as_str()))
        )
    })
}

/// A topic name made a table name jobs can write unquoted: `orders.v2` → `orders_v2`.
fn table_name_of(topic: &str) -> String {
    let mut name: String = topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        name.insert_str(0, "t_");
    }
    name
}

fn describe_sample(topic: &str, servers: &str, sample: &TopicSample) -> Vec<String> {
    let read: usize = sample.partitions.iter().map(|p| p.read).sum();
    let mut lines = vec![format!(
        "sampled {read} messages of topic '{topic}' on {servers}, from the start of {} partitions:",
        sample.partitions.len()
    )];
    for p in &sample.partitions {
        lines.push(format!(
            "  partition {}: {} of {} (offsets {}..{})",
            p.partition,
            p.read,
            p.high - p.low,
            p.low,
            p.high
        ));
    }
    if sample.tombstones > 0 {
        lines.push(format!(
            "{} of them without a value (tombstones), left out",
            sample.tombstones
        ));
    }
    if sample.timed_out {
        lines.push(format!(
            "stopped after {} s, before every partition gave its share",
            INFER_TIMEOUT.as_secs()
        ));
    }
    lines
}

async fn infer_schema(
    clusters: &[KafkaCluster],
    cluster: Option<&str>,
    bootstrap_servers: Option<&str>,
    topic: &str,
    samples: usize,
    format: SampleFormat,
    table: Option<String>,
) -> Result<()> {
    // With --bootstrap-servers, --cluster only names the cluster in the suggested entry.
    let known = match (cluster, bootstrap_servers) {
        (Some(c), None) => Some(find_cluster(clusters, c)?),
        (Some(c), Some(_)) => clusters.iter().find(|k| k.name == c),
        (None, _) => None,
    };
    let servers = bootstrap_servers
        .map(str::to_string)
        .or_else(|| known.map(|k| k.bootstrap_servers.clone()))
        .expect("clap requires --cluster or --bootstrap-servers");
    let mut config = known.map(|k| k.properties.clone()).unwrap_or_default();
    config.insert("bootstrap.servers".into(), servers.clone());
    let sample = {
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || sample_topic(&config, &topic, samples, INFER_TIMEOUT))
            .await
            .context("sampling the topic")??
    };
    let mut inference = SchemaInference::new(format);
    for value in &sample.values {
        inference.add(value);
    }
    let header = describe_sample(topic, &servers, &sample);
    if inference.records == 0 {
        bail!(
            "{}; none of the {} values is a {} record{}",
            header[0].trim_end_matches(':'),
            sample.values.len(),
            format.name(),
            inference
                .first_rejection
                .as_deref()
                .map(|e| format!(" (the first: {e})"))
                .unwrap_or_default()
        );
    }
    for line in &header {
        println!("-- {line}");
    }
    if inference.rejected > 0 {
        println!(
            "-- {} values are not {} records and were passed over (the first: {})",
            inference.rejected,
            format.name(),
            inference.first_rejection.as_deref().unwrap_or("?")
        );
    }
    for c in inference.columns() {
        if c.non_null < inference.records {
            println!(
                "-- column '{}' is missing or null in {} of {} records",
                c.name,
                inference.records - c.non_null,
                inference.records
            );
        }
    }
    let table = table.unwrap_or_else(|| table_name_of(topic));
    let mut options: Vec<(String, String)> = vec![
        ("connector".into(), "kafka".into()),
        ("topic".into(), topic.into()),
        ("properties.bootstrap.servers".into(), servers.clone()),
    ];
    if let Some(k) = known {
        for (key, value) in &k.properties {
            options.push((format!("properties.{key}"), value.clone()));
        }
    }
    options.push(("format".into(), format.name().into()));
    options.push(("scan.startup.mode".into(), "earliest-offset".into()));
    println!("{}", inference.create_table_ddl(&table, &options));

    let cluster_name = cluster
        .map(str::to_string)
        .unwrap_or_else(|| "local".into());
    let watermark = inference
        .columns()
        .iter()
        .find(|c| matches!(c.data_type(), InferredType::Timestamp(_)))
        .map(|c| {
            format!(
                "{} - INTERVAL '5' SECOND",
                meltwater_connectors::kafka::infer::sql_identifier(&c.name)
            )
        });
    println!();
    println!(
        "# The catalog entry registering the topic; jobs then read {cluster_name}.{table} without DDL."
    );
    if known.is_none() || bootstrap_servers.is_some() {
        println!("{}", cluster_entry_toml(&cluster_name, &servers));
    }
    print!(
        "{}",
        topic_entry_toml(
            &cluster_name,
            &table,
            topic,
            format.name(),
            &inference.column_list(),
            watermark.as_deref(),
            &[("scan.startup.mode".into(), "earliest-offset".into())],
        )
    );
    Ok(())
}
