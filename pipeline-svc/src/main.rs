use std::process::ExitCode;

use capstan_server::{auth::TokenArgs, serve, telemetry};
use clap::{Parser, Subcommand};
use pipeline_svc::app::{self, PipelineArgs};
#[cfg(feature = "demo")]
use pipeline_svc::cli::{self, DemoArgs};

/// Capstan pipeline: workflows as durable operations, streamed over gRPC.
#[derive(Parser)]
#[command(name = "pipeline-svc", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: PipelineArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print a signed bearer token (HS256) for grpcurl and scripts.
    Token(TokenArgs),
    /// Run the showcase demo: registry-svc and pipeline-svc in this process on SQLite,
    /// over gRPC on loopback; exits 0 exactly when the operation succeeded.
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Some(Command::Token(t)) => {
            println!("{}", t.mint()?);
            return Ok(true);
        }
        #[cfg(feature = "demo")]
        Some(Command::Demo(d)) => {
            let _telemetry =
                telemetry::init(capstan_server::config::LogFormat::Text, "pipeline-svc")?;
            return cli::run(d).await;
        }
        None => {}
    }
    let args = cli.serve;
    // Kept to the end: dropping it exports the last spans.
    let _telemetry = telemetry::init(args.common.log_format, "pipeline-svc")?;
    if let Some(addr) = args.common.metrics_listen {
        telemetry::init_metrics(addr)?;
    }
    let options = serve::ServeOptions::from_args(&args.common)?;
    let deadline = options.shutdown_deadline;
    let running = app::start(&args, options).await?;
    let task = running.task;
    serve::run_until_signal(async move { task.await? }, running.shutdown, deadline).await?;
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    #[cfg(feature = "demo")]
    if matches!(cli.command, Some(Command::Demo(_))) && std::env::var_os("RUST_LOG").is_none() {
        // The demo's progress display owns stderr; only errors interrupt it. Set before
        // any thread exists.
        std::env::set_var("RUST_LOG", "error");
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pipeline-svc: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pipeline-svc: {e:#}");
            ExitCode::FAILURE
        }
    }
}
