//! `meltwater`: run one SQL job file as a batch or streaming job, explain and validate it,
//! and look into the Iceberg catalogs it writes.

mod catalog_cmd;
mod cluster_cmd;
mod maintain_cmd;
mod report;
mod stream_cmd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use meltwater_batch::stage::FailTask;
use meltwater_batch::{BatchOptions, Executor};
use meltwater_plan::catalogs::{parse_catalogs, Catalogs, EMBEDDED_DEFAULT};
use meltwater_plan::{mode_rejection, plan_job, JobOptions, Mode, PlannedJob};

#[derive(Parser)]
#[command(
    name = "meltwater",
    version,
    about = "One SQL job, streaming or batch, into Iceberg tables"
)]
struct Cli {
    /// Catalog definitions (default: catalogs/default.toml in the working directory if it
    /// exists, else the embedded default: a SQLite catalog under ./meltwater-data).
    #[arg(long, global = true, value_name = "FILE")]
    catalog: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Batch,
    Stream,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Batch => Mode::Batch,
            ModeArg::Stream => Mode::Stream,
        }
    }
}

#[derive(clap::Args, Clone)]
struct JobArgs {
    /// The job file.
    job: PathBuf,
    /// Fills `${name}` in the job file; repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Parallelism (default: `SET 'parallelism.default'`, else the number of cores).
    #[arg(long)]
    parallelism: Option<usize>,
    /// The job id recorded in every snapshot (default: `SET 'pipeline.name'`, else the
    /// job file's name).
    #[arg(long)]
    job_id: Option<String>,
}

/// Options of stream mode.
#[derive(clap::Args, Clone, Default)]
struct StreamArgs {
    /// The checkpoint store: a directory, an `s3://bucket/prefix` or `file://` URL, or
    /// `profile:NAME[/PATH]` naming a storage profile of the catalog file (default:
    /// `SET 'execution.checkpointing.dir'`, else ./meltwater-data/checkpoints).
    #[arg(long, value_name = "DIR|URL")]
    checkpoint_dir: Option<String>,
    /// Restore from this checkpoint directory (`.../<job>/chk-<n>`, a path or URL as
    /// `meltwater checkpoints` lists it) instead of the newest one; the parallelism may
    /// differ from the run that wrote it.
    #[arg(long, value_name = "PATH|URL")]
    from_checkpoint: Option<String>,
    /// Start from the beginning of the sources, ignoring earlier checkpoints.
    #[arg(long)]
    fresh: bool,
}

/// Options of batch mode.
#[derive(clap::Args, Clone, Default)]
struct BatchArgs {
    /// Memory budget of sorts, aggregates, joins and shuffles (e.g. `2GiB`, `512MiB`);
    /// over it they spill to disk, and joins are planned as sort-merge joins, which can
    /// spill (default: unbounded).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_limit: Option<usize>,
    /// Where shuffle and spill files go; the run makes its own directory under it and
    /// removes it at the end (default: ./meltwater-data/shuffle).
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Keep the run's shuffle files.
    #[arg(long)]
    keep_shuffle: bool,
    /// Compression of the shuffle files (uncompressed by default: while the shuffle fits
    /// in the page cache, compressing costs more time than the writes it saves).
    #[arg(long, value_enum, default_value = "none")]
    shuffle_compression: CompressionArg,
    /// Attempts per task (I/O errors, panics, memory exhaustion) before the job fails.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Run the plan pipelined in memory instead of stage by stage.
    #[arg(long)]
    pipelined: bool,
    /// Run on a Ballista cluster (`meltwater cluster scheduler` and `executor`) at
    /// `df://HOST:PORT` instead of in this process; commits still happen here.
    #[arg(long, value_name = "df://HOST:PORT", conflicts_with = "pipelined")]
    cluster: Option<String>,
}

impl BatchArgs {
    fn spill_root(&self) -> PathBuf {
        self.spill_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("meltwater-data/shuffle"))
    }
}

#[derive(Clone, Copy, Default, ValueEnum)]
enum CompressionArg {
    Lz4,
    Zstd,
    #[default]
    None,
}

/// Parses `2GiB`, `512MiB`, `1.5g`, `1000000` (bytes).
pub(crate) fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a size such as 2GiB or 512MiB, got '{s}'"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "unknown size unit '{u}' in '{s}' (use B, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = n * mult;
    if bytes < 1.0 {
        return Err(format!("a memory limit must be positive, got '{s}'"));
    }
    Ok(bytes as usize)
}

#[derive(Subcommand)]
enum Command {
    /// Run a job.
    Run {
        #[command(flatten)]
        job: JobArgs,
        #[arg(long, value_enum)]
        mode: ModeArg,
        #[command(flatten)]
        stream: StreamArgs,
        #[command(flatten)]
        batch: BatchArgs,
    },
    /// List a stream job's complete checkpoints.
    Checkpoints {
        #[command(flatten)]
        job: JobArgs,
        /// The checkpoint store: a directory, a URL or `profile:NAME[/PATH]` (default:
        /// `SET 'execution.checkpointing.dir'`, else ./meltwater-data/checkpoints).
        #[arg(long, value_name = "DIR|URL")]
        checkpoint_dir: Option<String>,
    },
    /// Print a job's logical plans and the physical plans of a mode (in batch mode,
    /// its stages).
    Explain {
        #[command(flatten)]
        job: JobArgs,
        #[arg(long, value_enum, default_value = "batch")]
        mode: ModeArg,
        /// Show the pipelined plan instead of the stages.
        #[arg(long)]
        pipelined: bool,
    },
    /// Parse and plan a job without running it or changing any catalog.
    Validate {
        #[command(flatten)]
        job: JobArgs,
    },
    /// Look into the Iceberg catalogs.
    Catalog {
        #[command(subcommand)]
        command: catalog_cmd::CatalogCommand,
    },
    /// Maintain Iceberg tables (compaction).
    Maintain {
        #[command(subcommand)]
        command: maintain_cmd::MaintainCommand,
    },
    /// Run a scheduler or an executor of a cluster for batch jobs.
    Cluster {
        #[command(subcommand)]
        command: cluster_cmd::ClusterCommand,
    },
}

fn parse_param(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got '{s}'"))?;
    if k.is_empty() {
        return Err(format!("expected NAME=VALUE, got '{s}'"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

/// The catalogs and storage profiles: `--catalog FILE`, else `catalogs/default.toml` here,
/// else the embedded default.
pub(crate) fn load_catalogs(explicit: Option<&Path>) -> Result<Catalogs> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let (text, origin) = match explicit {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read catalog file {}", p.display()))?,
            p.display().to_string(),
        ),
        None => {
            let local = cwd.join("catalogs/default.toml");
            match std::fs::read_to_string(&local) {
                Ok(t) => (t, "catalogs/default.toml".to_string()),
                Err(_) => (
                    EMBEDDED_DEFAULT.to_string(),
                    "the embedded default catalog".to_string(),
                ),
            }
        }
    };
    parse_catalogs(&text, &origin, &cwd).map_err(|e| anyhow!(e))
}

async fn plan(
    cli_catalog: Option<&Path>,
    args: &JobArgs,
    mode: Mode,
    create_tables: bool,
) -> Result<PlannedJob> {
    plan_with(cli_catalog, args, mode, create_tables, None).await
}

async fn plan_with(
    cli_catalog: Option<&Path>,
    args: &JobArgs,
    mode: Mode,
    create_tables: bool,
    batch: Option<(&BatchArgs, &Path)>,
) -> Result<PlannedJob> {
    let text = std::fs::read_to_string(&args.job)
        .with_context(|| format!("cannot read job file {}", args.job.display()))?;
    let params: BTreeMap<String, String> = args.params.iter().cloned().collect();
    let file = args.job.display().to_string();
    let job = meltwater_sql::parse_job(&file, &text, &params)?;
    let catalogs = load_catalogs(cli_catalog)?;
    let options = JobOptions {
        mode,
        job_id: args.job_id.clone(),
        run_id: uuid::Uuid::new_v4().to_string(),
        parallelism: args.parallelism,
        catalogs: catalogs.iceberg,
        kafka: catalogs.kafka,
        create_tables,
        memory_limit: batch.and_then(|(b, _)| b.memory_limit),
        spill_dir: batch.map(|(_, dir)| dir.join("spill")),
    };
    Ok(plan_job(&job, &options).await?)
}

/// Plans a job for a run, creating the tables it declares (after a dry plan has shown
/// the job can run in `mode`); prints what planning did, and insists on an INSERT.
async fn plan_to_run(
    catalog: Option<&Path>,
    job: &JobArgs,
    mode: Mode,
    batch: Option<(&BatchArgs, &Path)>,
) -> Result<PlannedJob> {
    let planned = plan_with(catalog, job, mode, true, batch).await?;
    for a in &planned.actions {
        println!("{a}");
    }
    if planned.inserts.is_empty() {
        bail!(
            "{}: the job has no INSERT statement, so there is nothing to run",
            planned.file
        );
    }
    Ok(planned)
}

async fn run(cli: Cli) -> Result<()> {
    let catalog = cli.catalog.as_deref();
    match cli.command {
        Command::Run {
            job,
            mode,
            stream,
            batch,
        } => {
            let mode = Mode::from(mode);
            if mode == Mode::Stream {
                return run_stream(catalog, &job, &stream).await;
            }
            // Plan without touching catalogs first, so a job that cannot run in this mode
            // changes nothing; then plan for real, creating the tables the job declares.
            let dry = plan(catalog, &job, mode, false).await?;
            for s in dry.inserts.iter().chain(&dry.queries) {
                if let Some(reason) = mode_rejection(&s.plan, mode) {
                    bail!("{}:{}: {reason}", dry.file, s.loc);
                }
            }
            drop(dry);
            let spill_root = batch.spill_root();
            let planned = plan_to_run(catalog, &job, mode, Some((&batch, &spill_root))).await?;
            let parallelism = planned.session.state().config().target_partitions();
            if let Some(cluster) = &batch.cluster {
                println!(
                    "running {} (job {}, run {}) in batch mode on the cluster {cluster}, parallelism {parallelism}",
                    planned.file, planned.identity.job_id, planned.identity.run_id,
                );
                let run_report = meltwater_cluster::run_job(&planned, cluster).await?;
                // The executors read the sources: their counters stay there.
                let read: Vec<String> = planned
                    .sources()
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.connector))
                    .collect();
                println!("read on the cluster: {}", read.join(", "));
                report::print_run(&[], &run_report);
                return Ok(());
            }
            let options = BatchOptions {
                executor: if batch.pipelined {
                    Executor::Pipelined
                } else {
                    Executor::Staged
                },
                shuffle_dir: Some(spill_root.clone()),
                keep_shuffle: batch.keep_shuffle,
                shuffle_compression: match batch.shuffle_compression {
                    CompressionArg::Lz4 => {
                        Some(meltwater_batch::shuffle::CompressionType::LZ4_FRAME)
                    }
                    CompressionArg::Zstd => Some(meltwater_batch::shuffle::CompressionType::ZSTD),
                    CompressionArg::None => None,
                },
                max_attempts: batch.max_attempts,
                fail_task: std::env::var("MELTWATER_FAIL_TASK")
                    .ok()
                    .and_then(|v| FailTask::parse(&v)),
                progress: Default::default(),
            };
            let memory = batch
                .memory_limit
                .map(|m| format!(", memory limit {}", report::size(m as u64)))
                .unwrap_or_default();
            println!(
                "running {} (job {}, run {}) in batch mode ({}), parallelism {parallelism}{memory}",
                planned.file,
                planned.identity.job_id,
                planned.identity.run_id,
                if batch.pipelined {
                    "pipelined"
                } else {
                    "staged"
                }
            );
            let sources = planned.sources();
            let ticker = report::spawn_progress(
                sources.clone(),
                options.progress.clone(),
                Duration::from_secs(2),
            );
            let result = meltwater_batch::run_job(&planned, &options).await;
            ticker.finish().await;
            let run_report = result?;
            report::print_stages(&options.progress.stages());
            report::print_run(&sources, &run_report);
            if batch.keep_shuffle && !batch.pipelined {
                println!(
                    "kept shuffle files in {}",
                    options.run_dir(&planned).display()
                );
            }
            Ok(())
        }
        Command::Explain {
            job,
            mode,
            pipelined,
        } => {
            let mode = Mode::from(mode);
            let planned = plan(catalog, &job, mode, false).await?;
            for s in planned.inserts.iter().chain(&planned.queries) {
                let title = s
                    .target
                    .as_deref()
                    .map(|t| format!("INSERT INTO {t}"))
                    .unwrap_or_else(|| "query".into());
                println!("== {title} ({}:{})", planned.file, s.loc);
                println!("-- logical plan");
                println!("{}", s.plan.display_indent());
                if let Some(reason) = mode_rejection(&s.plan, mode) {
                    println!("-- rejected in {mode} mode: {reason}");
                    continue;
                }
                match mode {
                    Mode::Batch if pipelined => {
                        let physical =
                            meltwater_batch::physical_plan(&planned, s, Executor::Pipelined)
                                .await?;
                        let partitions = physical
                            .properties()
                            .output_partitioning()
                            .partition_count();
                        println!(
                            "-- physical plan (batch, pipelined, {})",
                            report::plural(partitions as u64, "output partition")
                        );
                        print!("{}", meltwater_batch::display_physical(&physical));
                    }
                    Mode::Batch => {
                        let physical =
                            meltwater_batch::physical_plan(&planned, s, Executor::Staged).await?;
                        let staged = meltwater_batch::stages_of(physical)?;
                        println!(
                            "-- stages (batch, {})",
                            report::plural(staged.stages.len() as u64, "stage")
                        );
                        print!("{}", staged.display());
                    }
                    Mode::Stream => {}
                }
            }
            if mode == Mode::Stream {
                let parallelism = meltwater_stream::job::job_parallelism(&planned);
                let graph = meltwater_stream::plan_stream(&planned, parallelism)?;
                println!("== dataflow (stream, parallelism {parallelism})");
                print!("{}", stream_cmd::explain(&graph));
            }
            Ok(())
        }
        Command::Validate { job } => {
            let planned = plan(catalog, &job, Mode::Batch, false).await?;
            let mut modes = Vec::new();
            for s in planned.inserts.iter().chain(&planned.queries) {
                if let Some(reason) = mode_rejection(&s.plan, Mode::Batch) {
                    modes.push(format!("{}:{}: batch mode: {reason}", planned.file, s.loc));
                }
            }
            println!(
                "{}: ok ({} statements, {} inserts, sources: {})",
                planned.file,
                planned.inserts.len() + planned.queries.len(),
                planned.inserts.len(),
                planned
                    .sources()
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.connector))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for a in &planned.actions {
                println!("{a}");
            }
            for m in modes {
                println!("{m}");
            }
            Ok(())
        }
        Command::Catalog { command } => catalog_cmd::run(catalog, command).await,
        Command::Maintain { command } => maintain_cmd::run(catalog, command).await,
        Command::Cluster { command } => cluster_cmd::run(command).await,
        Command::Checkpoints {
            job,
            checkpoint_dir,
        } => {
            let planned = plan(catalog, &job, Mode::Stream, false).await?;
            let opts = stream_cmd::options(
                &planned,
                load_catalogs(catalog)?.storage,
                checkpoint_dir.as_deref(),
                None,
                false,
            )?;
            stream_cmd::list_checkpoints(&planned, &opts).await
        }
    }
}

async fn run_stream(catalog: Option<&Path>, job: &JobArgs, args: &StreamArgs) -> Result<()> {
    // Plan the dataflow without touching catalogs first, so a job that cannot run in
    // stream mode (or whose checkpoint store cannot be opened) changes nothing.
    let dry = plan(catalog, job, Mode::Stream, false).await?;
    let parallelism = meltwater_stream::job::job_parallelism(&dry);
    meltwater_stream::plan_stream(&dry, parallelism)?;
    let opts = stream_cmd::options(
        &dry,
        load_catalogs(catalog)?.storage,
        args.checkpoint_dir.as_deref(),
        args.from_checkpoint.as_deref(),
        args.fresh,
    )?;
    drop(dry);
    let planned = plan_to_run(catalog, job, Mode::Stream, None).await?;
    println!(
        "running {} (job {}) in stream mode, parallelism {parallelism}, checkpoints every {} ms in {}",
        planned.file,
        planned.identity.job_id,
        opts.checkpoint_interval.as_millis(),
        stream_cmd::checkpoint_location(&opts)
    );
    let sources = planned.sources();
    let plan = meltwater_stream::plan_stream(&planned, parallelism)?;
    let mut status = None;
    let mut sinks = Vec::new();
    let signals = stream_cmd::spawn_stop_on_signals(opts.stop.clone());
    let mut job_metrics = None;
    let result = meltwater_stream::run_plan(&planned, plan, &opts, |plan, metrics| {
        sinks = stream_cmd::connector_sinks(plan, &metrics);
        job_metrics = Some(metrics.clone());
        status = Some(stream_cmd::spawn_status(
            plan,
            metrics,
            Duration::from_secs(2),
        ));
    })
    .await;
    if let Some(s) = status {
        s.abort();
    }
    signals.abort();
    let (report, _) = result?;
    if let Some(id) = report.restored_from {
        println!("restored from checkpoint {id}");
    }
    if report.stopped {
        println!(
            "stopped{}",
            report
                .last_checkpoint
                .map(|id| format!(" after checkpoint {id}; the next run resumes from it"))
                .unwrap_or_default()
        );
    }
    report::print_stream(&sources, &sinks, &report);
    if let Some(metrics) = job_metrics {
        for op in &metrics.operators {
            let spilled = meltwater_stream::metrics::JobMetrics::get(&op.spilled_bytes);
            if spilled > 0 {
                println!(
                    "spilled {} of state to local files in {} ({}), over its memory budget",
                    report::size(spilled),
                    op.id,
                    op.name
                );
            }
        }
    }
    Ok(())
}
