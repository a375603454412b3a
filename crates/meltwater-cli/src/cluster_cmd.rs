//! `meltwater cluster scheduler|executor`: the processes of a Ballista cluster that runs
//! batch jobs (`meltwater run JOB --mode batch --cluster df://HOST:PORT`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Subcommand;
use meltwater_cluster::ExecutorOptions;

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Run a scheduler: executors register with it and `run --cluster` sends it jobs.
    Scheduler {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50050", value_name = "HOST:PORT")]
        bind: SocketAddr,
        /// The host name executors and clients reach the scheduler by (default: the
        /// bind address).
        #[arg(long, value_name = "HOST")]
        external_host: Option<String>,
    },
    /// Run an executor: it runs the tasks the scheduler gives it and serves their
    /// shuffle output over Arrow Flight on PORT (and gRPC on PORT+1).
    Executor {
        /// The scheduler to register with.
        #[arg(long, default_value = "127.0.0.1:50050", value_name = "HOST:PORT")]
        scheduler: String,
        /// Address to listen on (Arrow Flight; gRPC on the next port).
        #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
        bind: SocketAddr,
        /// Tasks run at once (default: the number of cores).
        #[arg(long, value_name = "N")]
        concurrent_tasks: Option<usize>,
        /// Where shuffle files go (default: a temporary directory).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// The executor's memory pool (e.g. `2GiB`); over it, sorts, aggregates and
        /// joins spill to disk (default: unbounded).
        #[arg(long, value_name = "SIZE", value_parser = crate::parse_size)]
        memory_limit: Option<usize>,
    },
}

pub(crate) async fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Scheduler {
            bind,
            external_host,
        } => {
            println!("meltwater cluster scheduler listening on {bind}");
            meltwater_cluster::run_scheduler(bind, external_host).await?;
            Ok(())
        }
        ClusterCommand::Executor {
            scheduler,
            bind,
            concurrent_tasks,
            work_dir,
            memory_limit,
        } => {
            let (host, port) = scheduler
                .rsplit_once(':')
                .ok_or_else(|| anyhow!("--scheduler {scheduler}: expected HOST:PORT"))?;
            let port: u16 = port
                .parse()
                .with_context(|| format!("--scheduler {scheduler}: '{port}' is not a port"))?;
            // Fail early, with the address in the message, when the name does not resolve.
            (host, port)
                .to_socket_addrs()
                .with_context(|| format!("--scheduler {scheduler}: cannot resolve {host}"))?;
            if let Some(dir) = &work_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            println!(
                "meltwater cluster executor on {bind} (gRPC on port {}), scheduler {host}:{port}",
                bind.port() as u32 + 1
            );
            meltwater_cluster::run_executor(ExecutorOptions {
                bind,
                scheduler_host: host.to_string(),
                scheduler_port: port,
                concurrent_tasks,
                work_dir: work_dir.map(|d| d.display().to_string()),
                memory_limit: memory_limit.map(|m| m as u64),
            })
            .await?;
            Ok(())
        }
    }
}
