//! Catalog definition files (`catalogs/*.toml`): the Iceberg catalogs a job may name,
//! storage profiles (object-store locations with their options) checkpoints can be kept in,
//! and Kafka clusters with their registered topics (the data dictionary: a job reads and
//! writes `cluster.table` without a `CREATE TABLE`).
//!
//! ```toml
//! [iceberg.lake]
//! type = "sqlite"                       # the embedded catalog
//! path = "meltwater-data/catalog.db"    # relative to the working directory
//! warehouse = "meltwater-data/warehouse"
//! catalog-name = "lake"                 # optional: the catalog_name readers open it with
//!
//! [iceberg.rest]                        # a catalog behind an Iceberg REST server
//! type = "rest"
//! uri = "http://127.0.0.1:8181"
//! warehouse = "s3://warehouse"          # optional: sent to GET /v1/config
//! [iceberg.rest.properties]             # Iceberg catalog and FileIO properties
//! "s3.endpoint" = "http://127.0.0.1:8333"
//! "s3.path-style-access" = "true"
//! "credential-env" = "LAKE_CREDENTIAL"  # secrets only through environment variables
//!
//! [storage.chk]                         # SET 'execution.checkpointing.dir' = 'profile:chk'
//! url = "s3://bucket/checkpoints"
//! endpoint = "http://127.0.0.1:9000"
//! region = "us-east-1"
//! access-key-id-env = "CHK_ACCESS_KEY_ID"        # names of environment variables,
//! secret-access-key-env = "CHK_SECRET_ACCESS_KEY" # never the secrets themselves
//! allow-http = true
//!
//! [kafka.kafka_local]                   # a cluster: its tables are `kafka_local.<table>`
//! bootstrap-servers = "127.0.0.1:9092"
//! properties = { "client.id" = "etl" }  # librdkafka settings of every table of the cluster
//!
//! [kafka.kafka_local.topics.orders]     # the table kafka_local.orders
//! topic = "orders"                      # default: the table name
//! format = "json"
//! columns = "order_id BIGINT, customer STRING, ts TIMESTAMP(3)"   # or one string a column
//! watermark = "ts - INTERVAL '5' SECOND"  # the column is the one it names, or watermark-column
//! primary-key = ["order_id"]
//! options = { "scan.startup.mode" = "earliest-offset" }           # other WITH options
//! ```
//!
//! A registered topic is exactly the table of the `CREATE TABLE` it stands for
//! ([`RegisteredTopic::ddl`]): the entry is written out as that DDL and parsed by the job
//! file parser, so types, watermark and options mean what they mean in a job file.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use meltwater_connectors::kafka::infer::{is_plain_identifier, sql_string};
use meltwater_iceberg::IcebergCatalogConfig;
use meltwater_sql::sqlparser::ast::{visit_expressions, Expr as SqlExpr};
use meltwater_sql::sqlparser::dialect::GenericDialect;
use meltwater_sql::sqlparser::parser::Parser;
use meltwater_sql::{CreateTable, JobStatement};
use meltwater_state::{StorageProfile, StorageProfiles};
use serde::Deserialize;

use crate::types::{normalize_ident, schema_of};

/// The embedded default, used when no catalog file is given and `catalogs/default.toml`
/// does not exist in the working directory.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../catalogs/default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    iceberg: BTreeMap<String, IcebergEntry>,
    #[serde(default)]
    storage: BTreeMap<String, StorageProfile>,
    #[serde(default)]
    kafka: BTreeMap<String, KafkaEntry>,
}

/// What a catalog file defines.
#[derive(Debug, Clone, Default)]
pub struct Catalogs {
    pub iceberg: Vec<IcebergCatalogConfig>,
    /// Storage profiles by name (`[storage.<name>]`), for `profile:<name>` locations.
    pub storage: StorageProfiles,
    /// Kafka clusters (`[kafka.<name>]`) and their registered topics, by name.
    pub kafka: Vec<KafkaCluster>,
}

/// A Kafka cluster of a catalog file and the topics registered on it.
#[derive(Debug, Clone)]
pub struct KafkaCluster {
    pub name: String,
    pub bootstrap_servers: String,
    /// librdkafka settings every table of the cluster gets (as `properties.<key>`).
    pub properties: BTreeMap<String, String>,
    pub topics: Vec<RegisteredTopic>,
}

/// A topic registered in a catalog file: the table `cluster.table` of every job.
#[derive(Debug, Clone)]
pub struct RegisteredTopic {
    /// The table's name within its cluster.
    pub table: String,
    /// The equivalent `CREATE TABLE` statement.
    pub ddl: String,
    /// `ddl`, parsed.
    pub create: CreateTable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct KafkaEntry {
    bootstrap_servers: String,
    #[serde(default)]
    properties: BTreeMap<String, toml::Value>,
    #[serde(default)]
    topics: BTreeMap<String, TopicEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TopicEntry {
    topic: Option<String>,
    format: Option<String>,
    columns: toml::Value,
    watermark: Option<String>,
    watermark_column: Option<String>,
    #[serde(default)]
    primary_key: Vec<String>,
    #[serde(default)]
    options: BTreeMap<String, toml::Value>,
}

/// Schema names DataFusion resolves itself; a cluster cannot take them.
const RESERVED_SCHEMAS: [&str; 2] = [crate::DEFAULT_DATABASE, "information_schema"];

/// Keys a topic's `options` cannot set: the entry has its own keys for them.
const ENTRY_KEYS: [(&str, &str); 4] = [
    ("connector", "it is always 'kafka'"),
    ("topic", "use the entry's `topic` key"),
    ("format", "use the entry's `format` key"),
    (
        "properties.bootstrap.servers",
        "it is the cluster's `bootstrap-servers`",
    ),
];

/// URL schemes a storage profile may use (a URL without a scheme is a local directory).
const STORAGE_SCHEMES: [&str; 4] = ["file", "s3", "s3a", "memory"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
enum IcebergEntry {
    Sqlite {
        path: PathBuf,
        warehouse: PathBuf,
        #[serde(rename = "catalog-name")]
        catalog_name: Option<String>,
    },
    Rest {
        uri: String,
        warehouse: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, toml::Value>,
    },
}

/// REST catalog properties that hold secrets: a catalog file names the environment
/// variable holding one (`<key>-env`) instead.
const SECRET_PROPERTIES: [&str; 4] = [
    "token",
    "credential",
    "s3.secret-access-key",
    "s3.session-token",
];

/// A REST catalog entry: its properties as strings, secrets only by variable name.
fn rest_catalog(
    name: &str,
    uri: &str,
    warehouse: Option<&str>,
    properties: BTreeMap<String, toml::Value>,
) -> Result<IcebergCatalogConfig, String> {
    let scheme = uri.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        return Err(format!("uri '{uri}' is not an http:// or https:// URL"));
    }
    let mut props = BTreeMap::new();
    for (key, value) in properties {
        if SECRET_PROPERTIES.contains(&key.as_str()) {
            return Err(format!(
                "properties.{key}: secrets are not written in catalog files; set \"{key}-env\" to the name of an environment variable holding it"
            ));
        }
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Integer(i) => i.to_string(),
            other => {
                return Err(format!(
                    "properties.{key}: expected a string, a boolean or an integer, got {}",
                    other.type_str()
                ))
            }
        };
        props.insert(key, value);
    }
    Ok(IcebergCatalogConfig::rest(name, uri, warehouse, props))
}

/// The catalogs, storage profiles and Kafka clusters a file defines; relative paths (also
/// a profile's `url` without a scheme) are taken from `base` (the working directory).
/// `origin` names the file in errors, with the key at fault.
pub fn parse_catalogs(text: &str, origin: &str, base: &Path) -> Result<Catalogs, String> {
    let file: CatalogFile = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
    let mut storage = StorageProfiles::new();
    for (name, mut profile) in file.storage {
        match profile.url.split_once("://") {
            Some((scheme, _)) => {
                if !STORAGE_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) {
                    return Err(format!(
                        "{origin}: [storage.{name}]: unsupported URL scheme '{scheme}://' in '{}' (supported: {}, or a local directory)",
                        profile.url,
                        STORAGE_SCHEMES.map(|s| format!("{s}://")).join(", ")
                    ));
                }
            }
            None if profile.url.trim().is_empty() => {
                return Err(format!("{origin}: [storage.{name}]: url is empty"));
            }
            None => profile.url = base.join(&profile.url).display().to_string(),
        }
        storage.insert(name, profile);
    }
    let iceberg = file
        .iceberg
        .into_iter()
        .map(|(name, entry)| match entry {
            IcebergEntry::Sqlite {
                path,
                warehouse,
                catalog_name,
            } => Ok(IcebergCatalogConfig::sqlite(
                &name,
                base,
                &path,
                &warehouse,
                catalog_name.as_deref(),
            )),
            IcebergEntry::Rest {
                uri,
                warehouse,
                properties,
            } => rest_catalog(&name, &uri, warehouse.as_deref(), properties)
                .map_err(|e| format!("{origin}: iceberg.{name}: {e}")),
        })
        .collect::<Result<Vec<IcebergCatalogConfig>, String>>()?;
    let mut kafka = Vec::new();
    for (name, entry) in file.kafka {
        let key = format!("kafka.{name}");
        let err = |message: String| format!("{origin}: {key}: {message}");
        check_name(&name).map_err(err)?;
        if RESERVED_SCHEMAS.contains(&name.as_str()) || iceberg.iter().any(|c| c.name == name) {
            return Err(err(format!(
                "'{name}' is taken (by an Iceberg catalog of the file, or by the engine); name the cluster otherwise"
            )));
        }
        if entry.bootstrap_servers.trim().is_empty() {
            return Err(format!("{origin}: {key}.bootstrap-servers: it is empty"));
        }
        let properties = option_strings(&entry.properties)
            .map_err(|m| format!("{origin}: {key}.properties: {m}"))?;
        if properties.contains_key("bootstrap.servers") {
            return Err(format!(
                "{origin}: {key}.properties: set bootstrap.servers as the cluster's `bootstrap-servers`"
            ));
        }
        let mut cluster = KafkaCluster {
            name: name.clone(),
            bootstrap_servers: entry.bootstrap_servers,
            properties,
            topics: Vec::new(),
        };
        for (table, topic) in entry.topics {
            let registered = register_topic(&cluster, &table, topic)
                .map_err(|(sub, m)| format!("{origin}: {key}.topics.{table}{sub}: {m}"))?;
            cluster.topics.push(registered);
        }
        kafka.push(cluster);
    }
    Ok(Catalogs {
        iceberg,
        storage,
        kafka,
    })
}

/// A `[kafka.<cluster>]` entry with its brokers.
pub fn cluster_entry_toml(cluster: &str, bootstrap_servers: &str) -> String {
    format!(
        "[kafka.{cluster}]\nbootstrap-servers = {}\n",
        toml::Value::String(bootstrap_servers.to_string())
    )
}

/// A `[kafka.<cluster>.topics.<table>]` entry registering a topic (what
/// `meltwater catalog infer-schema` suggests). `watermark` is written commented out, as a
/// suggestion.
pub fn topic_entry_toml(
    cluster: &str,
    table: &str,
    topic: &str,
    format: &str,
    columns: &[String],
    watermark: Option<&str>,
    options: &[(String, String)],
) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = format!("[kafka.{cluster}.topics.{table}]\n");
    if topic != table {
        out.push_str(&format!("topic = {}\n", quote(topic)));
    }
    out.push_str(&format!("format = {}\ncolumns = [\n", quote(format)));
    for c in columns {
        out.push_str(&format!("  {},\n", quote(c)));
    }
    out.push_str("]\n");
    if let Some(w) = watermark {
        out.push_str(&format!("# watermark = {}\n", quote(w)));
    }
    if !options.is_empty() {
        let pairs: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
            .collect();
        out.push_str(&format!("options = {{ {} }}\n", pairs.join(", ")));
    }
    out
}

/// Cluster and table names are lower-case SQL words, so jobs write them unquoted.
fn check_name(name: &str) -> Result<(), String> {
    let ok = is_plain_identifier(name);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a name jobs can write unquoted: use lower-case letters, digits and '_' (a topic's own name goes in its `topic` key)"
        ))
    }
}

/// TOML scalars as option strings (`"linger.ms" = 5` is `'5'`).
fn option_strings(
    values: &BTreeMap<String, toml::Value>,
) -> Result<BTreeMap<String, String>, String> {
    values
        .iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "'{k}': expected a string, number or boolean (got {})",
                        other.type_str()
                    ))
                }
            };
            Ok((k.clone(), text))
        })
        .collect()
}

/// The one column a watermark expression names, as written.
fn watermark_column(expr: &str) -> Result<String, String> {
    let parsed = Parser::new(&GenericDialect {})
        .try_with_sql(expr)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| {
            e.to_string()
                .trim_start_matches("sql parser error: ")
                .to_string()
        })?;
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let _ = visit_expressions(&parsed, |e: &SqlExpr| {
        if let SqlExpr::Identifier(i) = e {
            names.insert(normalize_ident(i), i.to_string());
        }
        ControlFlow::<()>::Continue(())
    });
    match names.len() {
        1 => Ok(names.into_values().next().expect("one name")),
        n => Err(format!(
            "the expression names {n} columns, so which one is the event time is unclear; set `watermark-column`"
        )),
    }
}

/// Each part of the written-out DDL starts a line with this.
const INDENT: &str = "  ";

/// A part of the synthesized DDL and the entry key it comes from, for errors.
struct DdlPart {
    key: String,
    text: String,
}

/// Appends `parts` to `ddl`, one a line, separated by commas; returns the line each
/// starts on, counting from `line`.
fn write_parts<'a>(
    parts: &'a [DdlPart],
    ddl: &mut String,
    line: &mut u64,
) -> Vec<(u64, &'a DdlPart)> {
    let mut starts = Vec::with_capacity(parts.len());
    for (i, p) in parts.iter().enumerate() {
        starts.push((*line, p));
        *line += p.text.matches('\n').count() as u64 + 1;
        ddl.push_str(INDENT);
        ddl.push_str(&p.text);
        ddl.push_str(if i + 1 < parts.len() { ",\n" } else { "\n" });
    }
    starts
}

/// The table a topic entry stands for: its `CREATE TABLE` written out and parsed by the job
/// file parser, then checked as a job's DDL is. Errors carry the entry's sub-key
/// (`.columns`, `.watermark`, ...) and the message.
fn register_topic(
    cluster: &KafkaCluster,
    table: &str,
    entry: TopicEntry,
) -> Result<RegisteredTopic, (String, String)> {
    let at = |key: &str, m: String| (key.to_string(), m);
    check_name(table).map_err(|m| at("", m))?;
    let mut parts = Vec::new();
    let column_key = |i: Option<usize>| match i {
        Some(i) => format!(".columns[{i}]"),
        None => ".columns".to_string(),
    };
    match &entry.columns {
        toml::Value::String(s) => parts.push(DdlPart {
            key: column_key(None),
            text: s.clone(),
        }),
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let toml::Value::String(s) = item else {
                    return Err(at(
                        &column_key(Some(i)),
                        "expected a string such as \"id BIGINT\"".into(),
                    ));
                };
                parts.push(DdlPart {
                    key: column_key(Some(i)),
                    text: s.clone(),
                });
            }
        }
        other => {
            return Err(at(
                ".columns",
                format!(
                "expected a string (\"id BIGINT, name STRING\") or an array of strings (got {})",
                other.type_str()
            ),
            ))
        }
    }
    if parts.iter().all(|p| p.text.trim().is_empty()) {
        return Err(at(".columns", "the table needs at least one column".into()));
    }
    if let Some(expr) = &entry.watermark {
        let column = match &entry.watermark_column {
            Some(c) => c.clone(),
            None => watermark_column(expr).map_err(|m| at(".watermark", m))?,
        };
        parts.push(DdlPart {
            key: ".watermark".into(),
            text: format!("WATERMARK FOR {column} AS\n{INDENT}{INDENT}{expr}"),
        });
    } else if entry.watermark_column.is_some() {
        return Err(at(
            ".watermark-column",
            "it needs a `watermark` expression".into(),
        ));
    }
    if !entry.primary_key.is_empty() {
        parts.push(DdlPart {
            key: ".primary-key".into(),
            text: format!(
                "PRIMARY KEY ({}) NOT ENFORCED",
                entry.primary_key.join(", ")
            ),
        });
    }

    let options = option_strings(&entry.options).map_err(|m| at(".options", m))?;
    for (k, why) in ENTRY_KEYS {
        if options.contains_key(k) {
            return Err(at(".options", format!("'{k}' cannot be set here: {why}")));
        }
    }
    let mut with = vec![DdlPart {
        key: String::new(),
        text: "'connector' = 'kafka'".into(),
    }];
    if entry.topic.is_some() || !options.contains_key("topic-pattern") {
        with.push(DdlPart {
            key: ".topic".into(),
            text: format!(
                "'topic' = {}",
                sql_string(entry.topic.as_deref().unwrap_or(table))
            ),
        });
    }
    with.push(DdlPart {
        key: String::new(),
        text: format!(
            "'properties.bootstrap.servers' = {}",
            sql_string(&cluster.bootstrap_servers)
        ),
    });
    for (k, v) in &cluster.properties {
        let key = format!("properties.{k}");
        if !options.contains_key(&key) {
            with.push(DdlPart {
                key: String::new(),
                text: format!("{} = {}", sql_string(&key), sql_string(v)),
            });
        }
    }
    if let Some(f) = &entry.format {
        with.push(DdlPart {
            key: ".format".into(),
            text: format!("'format' = {}", sql_string(f)),
        });
    }
    for (k, v) in &options {
        with.push(DdlPart {
            key: ".options".into(),
            text: format!("{} = {}", sql_string(k), sql_string(v)),
        });
    }

    // One part a line (or more), so a parse error's line names the part.
    let mut ddl = format!("CREATE TABLE {}.{table} (\n", cluster.name);
    let mut line = 2;
    let mut lines: Vec<(u64, &DdlPart)> = write_parts(&parts, &mut ddl, &mut line);
    ddl.push_str(") WITH (\n");
    line += 1;
    lines.extend(write_parts(&with, &mut ddl, &mut line));
    ddl.push(')');

    let job = meltwater_sql::parse_job("", &ddl, &BTreeMap::new()).map_err(|e| {
        let (start, part) = lines
            .iter()
            .rev()
            .find(|(start, _)| *start <= e.loc.line)
            .map(|(s, p)| (*s, *p))
            .unwrap_or((1, &with[0]));
        // A column's text is written as it is, so the position is the value's own.
        let last_line = start + part.text.matches('\n').count() as u64;
        let position = match (part.key.starts_with(".columns"), part.text.contains('\n')) {
            (false, _) => String::new(),
            _ if e.loc.line > last_line => " (at the end of the value)".to_string(),
            (true, true) => {
                let within = e.loc.line - start + 1;
                let column = if within == 1 {
                    e.loc.column.saturating_sub(INDENT.len() as u64)
                } else {
                    e.loc.column
                };
                format!(" (line {within}, column {column} of the value)")
            }
            (true, false) => format!(
                " (at character {} of the value)",
                e.loc.column.saturating_sub(INDENT.len() as u64)
            ),
        };
        (part.key.clone(), format!("{}{position}", e.message))
    })?;
    let Some(JobStatement::CreateTable(create)) =
        job.statements.into_iter().next().map(|s| s.statement)
    else {
        return Err(at("", "the entry does not make a table".into()));
    };
    // The checks a job's CREATE TABLE gets, with the entry key that is at fault.
    let primary_key: Vec<String> = create.primary_key.iter().map(normalize_ident).collect();
    if let Err(m) = schema_of(&create.columns, &primary_key) {
        let key = if m.starts_with("PRIMARY KEY") {
            ".primary-key"
        } else {
            ".columns"
        };
        return Err(at(key, m));
    }
    crate::connector_table(&create).map_err(|m| {
        let key = if m.starts_with("WATERMARK") {
            ".watermark"
        } else {
            ""
        };
        at(key, m)
    })?;
    Ok(RegisteredTopic {
        table: table.to_string(),
        ddl,
        create,
    })
}

#[cfg(test)]
mod tests {
    use meltwater_iceberg::IcebergCatalogKind;

    use super::*;

    #[test]
    fn embedded_default_is_a_sqlite_catalog_under_meltwater_data() {
        let all = parse_catalogs(EMBEDDED_DEFAULT, "default", Path::new("/work/x")).unwrap();
        assert!(all.storage.is_empty(), "the default needs no service");
        let c = all.iceberg;
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "lake");
        let IcebergCatalogKind::Sqlite {
            path,
            warehouse,
            catalog_name,
        } = &c[0].kind
        else {
            panic!("the default is the embedded catalog: {:?}", c[0].kind)
        };
        assert_eq!(path, Path::new("/work/x/meltwater-data/catalog.db"));
        assert_eq!(warehouse, Path::new("/work/x/meltwater-data/warehouse"));
        assert_eq!(catalog_name, "lake");
    }

    #[test]
    fn rest_catalogs_with_properties_and_secrets_from_the_environment() {
        let text = r#"
[iceberg.rest]
type = "rest"
uri = "http://127.0.0.1:8181/"
warehouse = "s3://warehouse"
[iceberg.rest.properties]
"s3.endpoint" = "http://127.0.0.1:8333"
"s3.path-style-access" = true
"credential-env" = "LAKE_CREDENTIAL"
"#;
        let c = parse_catalogs(text, "r.toml", Path::new("/")).unwrap();
        let IcebergCatalogKind::Rest(rest) = &c.iceberg[0].kind else {
            panic!("a REST catalog: {:?}", c.iceberg[0].kind)
        };
        assert_eq!(c.iceberg[0].name, "rest");
        assert_eq!(rest.uri, "http://127.0.0.1:8181");
        assert_eq!(rest.warehouse.as_deref(), Some("s3://warehouse"));
        assert_eq!(rest.properties["s3.path-style-access"], "true");
        assert_eq!(rest.properties["credential-env"], "LAKE_CREDENTIAL");
        let e = rest.resolved_properties().unwrap_err();
        assert!(e.contains("LAKE_CREDENTIAL"), "{e}");

        let e = parse_catalogs(
            "[iceberg.r]\ntype = 'rest'\nuri = 'http://h'\nproperties = { token = 'abc' }",
            "s.toml",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.starts_with("s.toml: iceberg.r: properties.token"), "{e}");
        assert!(e.contains("token-env"), "{e}");
        let e = parse_catalogs(
            "[iceberg.r]\ntype = 'rest'\nuri = 'h:8181'",
            "s.toml",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.contains("not an http"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file() {
        let e = parse_catalogs(
            "[iceberg.x]\ntype='sqlite'\npath='a'\nwarehouse='b'\nwarehose='c'",
            "my.toml",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.starts_with("my.toml"), "{e}");
        assert!(e.contains("warehose"), "{e}");
    }

    #[test]
    fn storage_profiles_with_urls_and_environment_variable_names() {
        let text = r#"
[iceberg.lake]
type = "sqlite"
path = "a.db"
warehouse = "wh"

[storage.chk]
url = "s3://bucket/checkpoints"
endpoint = "http://127.0.0.1:9000"
region = "eu-west-1"
access-key-id-env = "CHK_KEY"
secret-access-key-env = "CHK_SECRET"
allow-http = true

[storage.disk]
url = "spare/checkpoints"
"#;
        let c = parse_catalogs(text, "x.toml", Path::new("/base")).unwrap();
        assert_eq!(c.iceberg.len(), 1);
        let chk = &c.storage["chk"];
        assert_eq!(chk.url, "s3://bucket/checkpoints");
        assert_eq!(chk.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(chk.region.as_deref(), Some("eu-west-1"));
        assert_eq!(chk.access_key_id_env.as_deref(), Some("CHK_KEY"));
        assert_eq!(chk.secret_access_key_env.as_deref(), Some("CHK_SECRET"));
        assert!(chk.allow_http);
        assert_eq!(c.storage["disk"].url, "/base/spare/checkpoints");

        // Secrets as literals are not a thing: unknown keys are errors.
        let e = parse_catalogs(
            "[storage.x]\nurl = 's3://b/p'\nsecret-access-key = 'hunter2'",
            "y.toml",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("y.toml") && e.contains("secret-access-key"),
            "{e}"
        );
        let e =
            parse_catalogs("[storage.x]\nurl = 'gs://b/p'", "y.toml", Path::new("/")).unwrap_err();
        assert!(
            e.contains("[storage.x]: unsupported URL scheme 'gs://'"),
            "{e}"
        );
    }

    #[test]
    fn every_catalog_file_in_the_repository_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../catalogs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let c = parse_catalogs(&text, &path.display().to_string(), Path::new("/w"))
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(!c.iceberg.is_empty(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 2, "default.toml and the storage example");
    }

    const ORDERS: &str = r#"
[kafka.kl]
bootstrap-servers = "127.0.0.1:9092"
properties = { "security.protocol" = "plaintext", "fetch.min.bytes" = 1 }

[kafka.kl.topics.orders]
topic = "orders-v2"
format = "json"
columns = "order_id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3), part INT METADATA FROM 'partition' VIRTUAL"
watermark = "ts - INTERVAL '5' SECOND"
primary-key = ["order_id"]
options = { "scan.startup.mode" = "earliest-offset", "properties.fetch.min.bytes" = "2" }

[kafka.kl.topics.clicks]
format = "csv"
columns = ["url STRING", "at TIMESTAMP(3)"]
"#;

    /// The table a `CREATE TABLE` statement makes, as the job planner builds it.
    fn table_of_ddl(ddl: &str) -> crate::source::SourceTable {
        let job = meltwater_sql::parse_job("job.sql", ddl, &BTreeMap::new()).unwrap();
        let JobStatement::CreateTable(t) = &job.statements[0].statement else {
            panic!("not a CREATE TABLE");
        };
        crate::connector_table(t).unwrap()
    }

    fn kafka_error(text: &str) -> String {
        parse_catalogs(text, "catalogs/x.toml", Path::new("/"))
            .map(|_| ())
            .unwrap_err()
    }

    #[test]
    fn a_registered_topic_is_the_table_its_ddl_makes() {
        let c = parse_catalogs(ORDERS, "catalogs/x.toml", Path::new("/")).unwrap();
        assert_eq!(c.kafka.len(), 1);
        let cluster = &c.kafka[0];
        assert_eq!(cluster.name, "kl");
        let names: Vec<&str> = cluster.topics.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(names, ["clicks", "orders"]);
        let registered = crate::connector_table(&cluster.topics[1].create).unwrap();
        let written = table_of_ddl(
            "CREATE TABLE kl.orders (
               order_id BIGINT, customer STRING, amount DECIMAL(10, 2), ts TIMESTAMP(3),
               part INT METADATA FROM 'partition' VIRTUAL,
               WATERMARK FOR ts AS ts - INTERVAL '5' SECOND,
               PRIMARY KEY (order_id) NOT ENFORCED
             ) WITH (
               'connector' = 'kafka', 'topic' = 'orders-v2',
               'properties.bootstrap.servers' = '127.0.0.1:9092',
               'properties.security.protocol' = 'plaintext', 'properties.fetch.min.bytes' = '2',
               'format' = 'json', 'scan.startup.mode' = 'earliest-offset')",
        );
        assert_eq!(registered.name, written.name);
        assert_eq!(registered.def.name, "kl.orders");
        assert_eq!(registered.def.schema, written.def.schema);
        assert_eq!(registered.def.options, written.def.options);
        assert_eq!(registered.def.primary_key, written.def.primary_key);
        assert_eq!(registered.def.metadata, written.def.metadata);
        assert_eq!(registered.watermark, written.watermark);
        assert_eq!(registered.connector(), "kafka");
        // The stored DDL is that statement too.
        let again = table_of_ddl(&cluster.topics[1].ddl);
        assert_eq!(again.def.options, written.def.options);

        let clicks = crate::connector_table(&cluster.topics[0].create).unwrap();
        assert_eq!(
            clicks.def.options["topic"], "clicks",
            "the table name by default"
        );
        assert_eq!(clicks.def.options["properties.fetch.min.bytes"], "1");
        assert_eq!(clicks.def.schema.fields().len(), 2);
        assert!(clicks.watermark.is_none());
    }

    #[test]
    fn entry_errors_name_the_file_and_the_key() {
        let topic = |body: &str| {
            format!("[kafka.kl]\nbootstrap-servers = 'b:9092'\n[kafka.kl.topics.orders]\nformat = 'json'\n{body}\n")
        };
        let cases = [
            (
                topic("columns = 'id BIGINT, name STRANG'"),
                "catalogs/x.toml: kafka.kl.topics.orders.columns: column 'name': unsupported column type STRANG",
            ),
            (
                topic("columns = 'id BIGINT,, name STRING'"),
                "catalogs/x.toml: kafka.kl.topics.orders.columns: Expected: identifier, found: , (at character 11 of the value)",
            ),
            (
                topic("columns = ['id BIGINT', 'name']"),
                "catalogs/x.toml: kafka.kl.topics.orders.columns[1]: Expected: a data type name, found: ) (at the end of the value)",
            ),
            (
                topic("columns = 42"),
                "catalogs/x.toml: kafka.kl.topics.orders.columns: expected a string",
            ),
            (
                topic("columns = 'a TIMESTAMP(3), b TIMESTAMP(3)'\nwatermark = 'GREATEST(a, b)'"),
                "catalogs/x.toml: kafka.kl.topics.orders.watermark: the expression names 2 columns",
            ),
            (
                topic("columns = 'a BIGINT'\nwatermark = 'ts - INTERVAL 5'"),
                "catalogs/x.toml: kafka.kl.topics.orders.watermark: WATERMARK FOR ts: the table has no column 'ts'",
            ),
            (
                topic("columns = 'a BIGINT'\nprimary-key = ['b']"),
                "catalogs/x.toml: kafka.kl.topics.orders.primary-key: PRIMARY KEY names column 'b'",
            ),
            (
                topic("columns = 'a BIGINT'\noptions = { topic = 'x' }"),
                "catalogs/x.toml: kafka.kl.topics.orders.options: 'topic' cannot be set here",
            ),
            (
                topic("columns = 'a BIGINT'\noptions = { 'scan.startup.mode' = 'soonest' }"),
                "catalogs/x.toml: kafka.kl.topics.orders: table 'kl.orders': invalid value 'soonest' for option 'scan.startup.mode'",
            ),
            (
                topic("columns = 'a BIGINT'\noptions = { 'x' = [1] }"),
                "catalogs/x.toml: kafka.kl.topics.orders.options: 'x': expected a string, number or boolean (got array)",
            ),
            (
                topic("columns = 'a BIGINT'\ncolumn = 'b BIGINT'"),
                "catalogs/x.toml: ",
            ),
            (
                "[kafka.Kafka-1]\nbootstrap-servers = 'b:9092'".into(),
                "catalogs/x.toml: kafka.Kafka-1: 'Kafka-1' is not a name jobs can write unquoted",
            ),
            (
                "[iceberg.lake]\ntype = 'sqlite'\npath = 'a'\nwarehouse = 'b'\n[kafka.lake]\nbootstrap-servers = 'b:9092'".into(),
                "catalogs/x.toml: kafka.lake: 'lake' is taken",
            ),
            (
                "[kafka.k]\nbootstrap-servers = 'b:9092'\nproperties = { 'bootstrap.servers' = 'c:9092' }".into(),
                "catalogs/x.toml: kafka.k.properties: set bootstrap.servers as the cluster's `bootstrap-servers`",
            ),
        ];
        for (text, expected) in cases {
            let e = kafka_error(&text);
            assert!(e.starts_with(expected), "{text}\n=> {e}");
        }
        // An unknown key says which.
        let e = kafka_error(&topic("columns = 'a BIGINT'\ncolumn = 'b BIGINT'"));
        assert!(e.contains("unknown field `column`"), "{e}");
    }

    fn plan_with_registered_topics(job: &str) -> Result<crate::PlannedJob, crate::PlanError> {
        let c = parse_catalogs(ORDERS, "catalogs/x.toml", Path::new("/")).unwrap();
        let job = meltwater_sql::parse_job("job.sql", job, &BTreeMap::new()).unwrap();
        let options = crate::JobOptions {
            mode: crate::Mode::Stream,
            job_id: None,
            run_id: "r".into(),
            parallelism: Some(1),
            catalogs: Vec::new(),
            kafka: c.kafka,
            create_tables: false,
            memory_limit: None,
            spill_dir: None,
        };
        futures::executor::block_on(crate::plan_job(&job, &options))
    }

    #[test]
    fn a_suggested_entry_registers_its_topic() {
        let entry = topic_entry_toml(
            "kl",
            "orders",
            "orders.v2",
            "json",
            &[
                "\"orderId\" BIGINT".to_string(),
                "ts TIMESTAMP(3)".to_string(),
            ],
            Some("ts - INTERVAL '5' SECOND"),
            &[("scan.startup.mode".into(), "earliest-offset".into())],
        );
        let text = format!("[kafka.kl]\nbootstrap-servers = 'b:9092'\n{entry}");
        let c = parse_catalogs(&text, "x.toml", Path::new("/"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let t = crate::connector_table(&c.kafka[0].topics[0].create).unwrap();
        assert_eq!(t.def.options["topic"], "orders.v2");
        assert_eq!(t.def.options["scan.startup.mode"], "earliest-offset");
        assert_eq!(t.def.schema.field(0).name(), "orderId");
        assert!(entry.contains("# watermark = "), "{entry}");
    }

    #[test]
    fn jobs_read_and_write_registered_topics_without_ddl() {
        let planned = plan_with_registered_topics(
            "CREATE TABLE out (id BIGINT, who STRING) WITH ('connector' = 'print');
             INSERT INTO out SELECT order_id, customer FROM kl.orders WHERE amount > 1;
             INSERT INTO kl.clicks SELECT customer, ts FROM KL.Orders;",
        )
        .unwrap();
        let sources = planned.sources();
        assert_eq!(sources.len(), 1, "{sources:?}");
        assert_eq!(sources[0].name, "kl.orders");
        assert_eq!(planned.inserts[1].target.as_deref(), Some("kl.clicks"));
    }

    #[test]
    fn a_job_cannot_redeclare_a_cluster_table() {
        let e = plan_with_registered_topics(
            "CREATE TABLE kl.orders (id BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '1');",
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            e.message
                .contains("'kl' is a Kafka cluster of the catalog file"),
            "{e}"
        );
        let e = plan_with_registered_topics(
            "CREATE TABLE t (id BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '1');
             INSERT INTO kl.nope SELECT id FROM t;",
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            e.message
                .contains("register the topic in the catalog file as [kafka.kl.topics.<table>] (registered: clicks, orders)"),
            "{e}"
        );
        // A one-part name is the job's own table.
        plan_with_registered_topics(
            "CREATE TABLE orders (id BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '1');
             CREATE TABLE out (id BIGINT) WITH ('connector' = 'print');
             INSERT INTO out SELECT id FROM orders;",
        )
        .map(|_| ())
        .unwrap();
    }
}
