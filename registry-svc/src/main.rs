use std::process::ExitCode;

use capstan_server::{auth::TokenArgs, serve, telemetry};
use clap::{Parser, Subcommand};
use registry_svc::app::{self, RegistryArgs};

/// Capstan registry: model runs, artifacts and aliases over gRPC.
#[derive(Parser)]
#[command(name = "registry-svc", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: RegistryArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print a signed bearer token (HS256) for grpcurl and scripts.
    Token(TokenArgs),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Token(t)) = cli.command {
        println!("{}", t.mint()?);
        return Ok(());
    }
    let args = cli.serve;
    // Kept to the end: dropping it exports the last spans.
    let _telemetry = telemetry::init(args.common.log_format, "registry-svc")?;
    if let Some(addr) = args.common.metrics_listen {
        telemetry::init_metrics(addr)?;
    }
    let options = serve::ServeOptions::from_args(&args.common)?;
    let deadline = options.shutdown_deadline;
    let running = app::start(&args, options).await?;
    let task = running.task;
    serve::run_until_signal(async move { task.await? }, running.shutdown, deadline).await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("registry-svc: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-svc: {e:#}");
            ExitCode::FAILURE
        }
    }
}
