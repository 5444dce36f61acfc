//! `cohortcast cluster scheduler|executor`: Ballista's scheduler and
//! executor with cohortcast's functions registered (see
//! `cohortcast_data::cluster`).

use std::net::SocketAddr;

use anyhow::Result;
use clap::{Args, Subcommand};
use cohortcast_data::cluster::{run_executor, run_scheduler, ExecutorOptions, SchedulerOptions};
use cohortcast_data::store::S3Options;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// A Ballista scheduler: clients connect with --engine ballista://HOST:PORT.
    Scheduler {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// Host name executors and clients reach it by (default: the bound IP).
        #[arg(long)]
        external_host: Option<String>,
    },
    /// A Ballista executor: runs the ingest's tasks and reads the inputs
    /// (local paths it can see, or s3:// with its own credentials).
    Executor {
        /// The scheduler, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// Host to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// Host name the scheduler and other executors reach it by (default: --bind-host).
        #[arg(long)]
        external_host: Option<String>,
        /// Arrow Flight port (shuffle data and results).
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// gRPC port (tasks from the scheduler).
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks run at once (default: the machine's cores).
        #[arg(long)]
        concurrent_tasks: Option<usize>,
        /// Folder for shuffle files (default: a temporary folder).
        #[arg(long)]
        work_dir: Option<String>,
    },
}

pub fn run(a: ClusterArgs, s3: S3Options) -> Result<()> {
    match a.role {
        Role::Scheduler { bind, external_host } => run_scheduler(&SchedulerOptions { bind, external_host, s3 })?,
        Role::Executor { scheduler, bind_host, external_host, port, grpc_port, concurrent_tasks, work_dir } => {
            let concurrent_tasks =
                concurrent_tasks.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
            run_executor(&ExecutorOptions {
                scheduler,
                bind_host,
                external_host,
                port,
                grpc_port,
                concurrent_tasks,
                work_dir,
                s3,
            })?
        }
    }
    Ok(())
}
