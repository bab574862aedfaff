//! The `enforcer` command.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::Parser as _;
use enforcer::{
    agent,
    cli::{Cli, Command, PolicyCommand},
    policy::{DriftRule, Policy, document::Document, load},
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|error| {
        // Logging is not up yet; this is the one message that cannot go through it.
        #[expect(clippy::print_stderr, reason = "before the logger exists")]
        {
            eprintln!("invalid --log filter {:?} ({error}); using info", cli.log);
        }
        EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{}", enforcer::error_chain(error.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let policy = if args.policy.is_empty() {
                Policy::builtin(DriftRule {
                    mode: args.mode,
                    allow_memfd: args.allow_memfd,
                    allow_writable_mounts: args.allow_writable_mounts,
                    allowed_paths: args.allow_path,
                })
            } else {
                match load::load(&args.policy).and_then(|set| load::agent_policy(&set)) {
                    Ok(policy) => policy,
                    Err(diagnostics) => {
                        for diagnostic in &diagnostics {
                            tracing::error!("{diagnostic}");
                        }
                        anyhow::bail!(
                            "invalid policy: {} problems in the policy files",
                            diagnostics.len()
                        );
                    }
                }
            };
            runtime.block_on(agent::run(agent::RunOptions {
                backend: args.backend,
                policy,
                track_writes: args.track_writes,
                signal_mmap_check: args.signal_mmap_check,
                host_pid: args.host_pid,
                btf: args.btf,
                image_stores: args.image_store,
            }))?;
            Ok(())
        }
        Command::Policy(PolicyCommand::Check { paths }) => match load::load(&paths) {
            Ok(set) => {
                println!(
                    "{} DriftPolicy and {} VShield documents: valid",
                    set.drift.len(),
                    set.vshields.len()
                );
                Ok(())
            }
            Err(diagnostics) => {
                for diagnostic in &diagnostics {
                    println!("{diagnostic}");
                }
                anyhow::bail!("{} problems in the policy files", diagnostics.len())
            }
        },
        Command::Policy(PolicyCommand::Schema) => {
            let schema = schemars::schema_for!(Document);
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
    }
}
