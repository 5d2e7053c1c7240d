//! The `taskbroker` command line: one file per subcommand.

#[cfg(feature = "bench")]
pub mod bench;
pub(crate) mod client;
mod config_cmd;
mod enqueue;
mod get;
mod queues;
mod route;
mod schedules;
pub mod serve;
pub mod token;
mod watch;
mod work;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::{self, LogFormat};

/// Exit code for bad configuration or usage (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "taskbroker", version, about = "A gRPC task broker")]
pub struct Cli {
    /// Log format (filter with RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TASKBROKER_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Enqueue one task.
    Enqueue(enqueue::EnqueueArgs),
    /// Print a task as JSON.
    Get(get::GetArgs),
    /// Cancel a task and print it as JSON.
    Cancel(get::GetArgs),
    /// Run a command for every task of the given queues (a polyglot worker).
    Work(work::WorkArgs),
    /// Print a task's states as JSON lines until it finishes.
    Watch(watch::WatchArgs),
    /// List queues with their counts (a table, or --json).
    Queues(queues::QueuesArgs),
    /// Pause, resume, purge or redrive one queue.
    #[command(subcommand)]
    Queue(queues::QueueCommand),
    /// List a queue's tasks in one state, oldest first.
    Tasks(queues::TasksArgs),
    /// List periodic schedules with their next runs; `trigger NAME` runs one
    /// now, `delete NAME` removes a runtime one.
    Schedules(schedules::SchedulesArgs),
    /// Show which queue and priority an enqueue would get (routing dry-run).
    Route(route::RouteArgs),
    /// Make the broker re-read its config file; prints what changed.
    Reload(client::ServerArg),
    /// Configuration helpers.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Make access tokens (for [auth]).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Load-test a broker (in-process by default) against a same-run gRPC echo baseline.
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
}

/// Errors that end the program with a specific exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration: exit 64.
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Config(Vec<String>),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Parses the command line, runs the subcommand, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        serve::telemetry_defaults(args);
    }
    let tracing = telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("taskbroker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Enqueue(args) => enqueue::run(args).await.map_err(CliError::Other),
            Command::Get(args) => get::run(args, false).await.map_err(CliError::Other),
            Command::Cancel(args) => get::run(args, true).await.map_err(CliError::Other),
            Command::Work(args) => work::run(args).await.map_err(CliError::Other),
            Command::Watch(args) => watch::run(args).await.map_err(CliError::Other),
            Command::Queues(args) => queues::queues(args).await.map_err(CliError::Other),
            Command::Queue(cmd) => queues::queue(cmd).await.map_err(CliError::Other),
            Command::Tasks(args) => queues::tasks(args).await.map_err(CliError::Other),
            Command::Schedules(args) => schedules::run(args).await.map_err(CliError::Other),
            Command::Route(args) => route::route(args).await.map_err(CliError::Other),
            Command::Reload(server) => route::reload(server).await.map_err(CliError::Other),
            Command::Config(cmd) => config_cmd::run(cmd),
            Command::Token(cmd) => token::run(cmd).map_err(CliError::Other),
            #[cfg(feature = "bench")]
            Command::Bench(args) => bench::run(args).await,
        }
    });
    // Spans still buffered go out before the process ends.
    if let Some(t) = tracing {
        t.shutdown();
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Config(problems)) => {
            eprintln!("taskbroker: {}", CliError::Config(problems));
            ExitCode::from(EXIT_CONFIG)
        }
        Err(CliError::Other(e)) => {
            eprintln!("taskbroker: {e:#}");
            ExitCode::FAILURE
        }
    }
}
