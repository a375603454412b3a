//! `meltwater`: run one SQL job file as a batch or streaming job, explain and validate it,
//! and look into the Iceberg catalogs it writes.

mod catalog_cmd;
mod maintain_cmd;
mod report;
mod stream_cmd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
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
    /// Print a job's logical plans and the physical plans of a mode.
    Explain {
        #[command(flatten)]
        job: JobArgs,
        #[arg(long, value_enum, default_value = "batch")]
        mode: ModeArg,
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
    let text = std::fs::read_to_string(&args.job)
        .with_context(|| format!("cannot read job file {}", args.job.display()))?;
    let params: BTreeMap<String, String> = args.params.iter().cloned().collect();
    let file = args.job.display().to_string();
    let job = meltwater_sql::parse_job(&file, &text, &params)?;
    let options = JobOptions {
        mode,
        job_id: args.job_id.clone(),
        run_id: uuid::Uuid::new_v4().to_string(),
        parallelism: args.parallelism,
        catalogs: load_catalogs(cli_catalog)?.iceberg,
        create_tables,
    };
    Ok(plan_job(&job, &options).await?)
}

/// Plans a job for a run, creating the tables it declares (after a dry plan has shown
/// the job can run in `mode`); prints what planning did, and insists on an INSERT.
async fn plan_to_run(catalog: Option<&Path>, job: &JobArgs, mode: Mode) -> Result<PlannedJob> {
    let planned = plan(catalog, job, mode, true).await?;
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
        Command::Run { job, mode, stream } => {
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
            let planned = plan_to_run(catalog, &job, mode).await?;
            let parallelism = planned.session.state().config().target_partitions();
            println!(
                "running {} (job {}, run {}) in batch mode, parallelism {parallelism}",
                planned.file, planned.identity.job_id, planned.identity.run_id
            );
            let sources = planned.sources();
            let ticker = report::spawn_progress(sources.clone(), Duration::from_secs(2));
            let result = meltwater_batch::run_job(&planned).await;
            ticker.abort();
            let run_report = result?;
            report::print_run(&sources, &run_report);
            Ok(())
        }
        Command::Explain { job, mode } => {
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
                    Mode::Batch => {
                        let physical = meltwater_batch::physical_plan(&planned, s).await?;
                        let partitions = physical
                            .properties()
                            .output_partitioning()
                            .partition_count();
                        println!(
                            "-- physical plan (batch, {})",
                            report::plural(partitions as u64, "output partition")
                        );
                        print!("{}", meltwater_batch::display_physical(&physical));
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
    let planned = plan_to_run(catalog, job, Mode::Stream).await?;
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
