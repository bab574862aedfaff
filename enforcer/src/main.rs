//! The `enforcer` command.

use std::{
    io::{IsTerminal as _, Read as _},
    path::Path,
};

use anyhow::Context as _;
use enforcer::{
    agent,
    cli::{Command, HookCommand, PolicyCommand, RunArgs, VShieldCommand},
    control::{self, Reply, Request, VShieldsReply},
    hook,
    policy::{DriftRule, Mode, Policy, document::Document, load},
    resolve::Root,
    trivy,
};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = match enforcer::config::parse_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(error) => {
            #[expect(clippy::print_stderr, reason = "before the logger exists")]
            {
                eprintln!("error: {error}");
            }
            return std::process::ExitCode::from(2);
        }
    };
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

/// `enforcer run`.
fn run_agent(args: RunArgs) -> anyhow::Result<()> {
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
            audit_exec_sessions: args.audit_exec_sessions,
        })
    } else {
        match load::agent_policy_at(&args.policy) {
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
        policy_paths: args.policy,
        track_writes: args.track_writes,
        signal_mmap_check: args.signal_mmap_check,
        host_pid: args.host_pid,
        btf: args.btf,
        image_stores: args.image_store,
        control_socket: args.control_socket,
        metrics_address: args.metrics_address,
        rate_limit: args.rate_limit,
        accounting_interval: args.accounting_interval,
        pin_dir: args.pin_dir,
        uninstall: args.daemonset.map(|daemonset| agent::Uninstall {
            daemonset,
            kubeconfig: args.kubeconfig.clone(),
        }),
        sinks: if args.sink.is_empty() {
            vec![enforcer::audit::sink::spec::SinkSpec::default_stdout()]
        } else {
            args.sink
        },
        sources: agent::Sources {
            podman_storage: args.podman_storage,
            cri_sockets: if args.no_cri {
                Vec::new()
            } else {
                args.cri_socket
                    .iter()
                    .map(std::path::PathBuf::from)
                    .collect()
            },
            kubernetes: args.kubernetes_node.map(|node| agent::KubernetesOptions {
                node,
                kubeconfig: args.kubeconfig,
            }),
        },
    }))?;
    Ok(())
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => run_agent(args),
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
        Command::VShield(VShieldCommand::List { socket, json }) => {
            match control::ask(&socket, &Request::VShields)? {
                Reply::VShields(reply) if json => {
                    println!("{}", serde_json::to_string_pretty(&reply)?);
                }
                Reply::VShields(reply) => print!("{}", vshield_table(&reply)),
                Reply::Error(error) => anyhow::bail!("the agent answered: {error}"),
                other @ (Reply::ContainerPlaced(_) | Reply::Flushed(_) | Reply::Status(_)) => {
                    anyhow::bail!("the agent answered something else: {other:?}")
                }
            }
            Ok(())
        }
        Command::Status { socket, json } => match control::ask(&socket, &Request::Status)? {
            Reply::Status(status) if json => {
                println!("{}", serde_json::to_string_pretty(&status)?);
                Ok(())
            }
            Reply::Status(status) => {
                print!("{}", status_text(&status));
                Ok(())
            }
            Reply::Error(error) => anyhow::bail!("the agent answered: {error}"),
            other => anyhow::bail!("the agent answered something else: {other:?}"),
        },
        Command::Flush { socket } => match control::ask(&socket, &Request::Flush)? {
            Reply::Flushed(flushed) => {
                println!("{} audit records written", flushed.written);
                Ok(())
            }
            Reply::Error(error) => anyhow::bail!("the agent answered: {error}"),
            other => anyhow::bail!("the agent answered something else: {other:?}"),
        },
        Command::VShield(VShieldCommand::FromTrivy {
            report,
            root,
            mode,
            every_container,
            output,
        }) => from_trivy(
            &report,
            root.as_deref(),
            mode,
            every_container,
            output.as_deref(),
        ),
        Command::Hook(command) => run_hook(command),
        Command::Unload { pin_dir } => unload(&pin_dir),
        Command::Policy(PolicyCommand::Schema) => {
            let schema = schemars::schema_for!(Document);
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
    }
}

/// `enforcer unload`: prints each pin removed, then what it did.
fn unload(pin_dir: &Path) -> anyhow::Result<()> {
    let unloaded = enforcer::pins::unload(pin_dir)?;
    for path in &unloaded.removed {
        println!("removed {}", path.display());
    }
    if unloaded.removed.is_empty() {
        println!("nothing pinned in {}", pin_dir.display());
    } else {
        println!(
            "unloaded: {} pins removed from {}, {} programs detached",
            unloaded.removed.len(),
            pin_dir.display(),
            unloaded.detached
        );
    }
    if unloaded.agent_running || unloaded.still_attached > 0 {
        eprintln!(
            "an agent is still running with {}: its {} programs enforce until it stops",
            pin_dir.display(),
            unloaded.still_attached
        );
    }
    Ok(())
}

fn run_hook(command: HookCommand) -> anyhow::Result<()> {
    match command {
        HookCommand::Oci {
            socket,
            fail_closed,
        } => {
            let mut state = String::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_string(&mut state)
                .context("reading the container's state from stdin")?;
            match hook::announce(&socket, &state) {
                Ok(_) => Ok(()),
                Err(error) if fail_closed => Err(error.into()),
                Err(error) => {
                    // The runtime shows a hook's stderr; the container starts.
                    tracing::warn!(
                        error = %enforcer::error_chain(&error),
                        "the container starts unannounced: every vShield with an image selector applies \
                         to it until the agent finds it"
                    );
                    Ok(())
                }
            }
        }
        HookCommand::OciConfig {
            socket,
            fail_closed,
        } => {
            let binary = std::env::current_exe().context("finding this program's path")?;
            let config = hook::config(&binary, &socket, fail_closed);
            println!("{}", serde_json::to_string_pretty(&config)?);
            Ok(())
        }
    }
}

/// The largest Trivy report read.
const REPORT_MAX: u64 = 512 << 20;

fn from_trivy(
    report_path: &Path,
    root: Option<&Path>,
    mode: Mode,
    every_container: bool,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut text = Vec::new();
    std::fs::File::open(report_path)
        .with_context(|| format!("{}: opening the report", report_path.display()))?
        .take(REPORT_MAX + 1)
        .read_to_end(&mut text)
        .with_context(|| format!("{}: reading the report", report_path.display()))?;
    anyhow::ensure!(
        text.len() as u64 <= REPORT_MAX,
        "{}: larger than {REPORT_MAX} bytes",
        report_path.display()
    );
    let report: trivy::Report = serde_json::from_slice(&text).map_err(|error| {
        anyhow::anyhow!(
            "{}:{}:{}: not a Trivy JSON report: {error}",
            report_path.display(),
            error.line(),
            error.column()
        )
    })?;
    let root = root
        .map(|root| {
            Root::open(root).with_context(|| format!("{}: opening the image root", root.display()))
        })
        .transpose()?;
    let conversion = trivy::convert(&report, root.as_ref());
    for skipped in &conversion.skipped {
        tracing::warn!(
            vulnerability = %skipped.vulnerability,
            package = %skipped.package,
            "no vShield: {}",
            skipped.reason
        );
    }
    let options = trivy::Options {
        mode,
        every_container,
    };
    let policy = trivy::render(
        &report,
        &conversion,
        &options,
        &report_path.display().to_string(),
    );
    match output {
        Some(path) => std::fs::write(path, policy)
            .with_context(|| format!("{}: writing the policy", path.display()))?,
        None => print!("{policy}"),
    }
    tracing::info!(
        vshields = conversion.shields.len(),
        files = conversion.shields.iter().map(|s| s.files.len()).sum::<usize>(),
        skipped = conversion.skipped.len(),
        %mode,
        "vShield policy written"
    );
    Ok(())
}

/// `enforcer vshield list` as a table.
fn vshield_table(reply: &VShieldsReply) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "policy {} (generation {}), backend {}, decided: {}\n",
        reply.policy,
        reply.generation,
        reply.backend,
        if reply.decided.is_empty() {
            "nothing".to_owned()
        } else {
            reply.decided.join(", ")
        }
    );
    let mut rows = vec![[
        "NAME".to_owned(),
        "VULNERABILITY".to_owned(),
        "MODE".to_owned(),
        "OPERATIONS".to_owned(),
        "SCOPE".to_owned(),
        "FILES".to_owned(),
        "HITS".to_owned(),
    ]];
    rows.extend(reply.vshields.iter().map(|shield| {
        [
            shield.name.clone(),
            shield.vulnerability.clone(),
            shield.mode.clone(),
            shield.operations.join(","),
            shield.scope.clone(),
            shield.files.to_string(),
            shield.hits.to_string(),
        ]
    }));
    let mut widths = [0; 7];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if reply.vshields.is_empty() {
        out.push_str("(no vShields in force)\n");
    }
    out
}

/// `enforcer status` for people. Pure.
fn status_text(status: &control::StatusReply) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let _ = writeln!(
        text,
        "enforcer {} running for {} s",
        status.version, status.uptime_seconds
    );
    let _ = writeln!(text, "backend:    {}", status.backend);
    if let Some(reason) = &status.fallback_reason {
        let _ = writeln!(text, "            (fallback: {reason})");
    }
    let _ = writeln!(text, "kernel:     {}", status.kernel.release);
    let _ = writeln!(text, "LSMs:       {}", status.kernel.lsm);
    let _ = writeln!(text, "tracking:   {}", status.kernel.tracking);
    let policy = &status.policy;
    let _ = writeln!(
        text,
        "policy:     {} (generation {}, {}){}",
        policy.name,
        policy.generation,
        policy.mode,
        if policy.paths.is_empty() {
            " built in".to_owned()
        } else {
            format!(" from {}", policy.paths.join(", "))
        }
    );
    let _ = writeln!(
        text,
        "            {} DriftPolicies with selectors{}, {} vShields",
        policy.drift_policies.len(),
        if policy.drift_policies.is_empty() {
            String::new()
        } else {
            format!(" ({})", policy.drift_policies.join(", "))
        },
        policy.vshields
    );
    let pinning = &status.pinning;
    let _ = writeln!(
        text,
        "pinned:     {} (generation {}; stays in force when the agent stops)",
        pinning.dir, pinning.generation
    );
    if !pinning.replaced.is_empty() {
        let _ = writeln!(
            text,
            "            took over from {} (pinned since {}), {} its maps; {} records lost before start",
            pinning.replaced.join(", "),
            pinning.pinned_since.as_deref().unwrap_or("?"),
            if pinning.adopted_maps {
                "adopting"
            } else {
                "replacing"
            },
            pinning.events_lost_before_start
        );
    }
    let _ = writeln!(text, "containers: {} known", status.containers);
    let _ = writeln!(text, "programs:");
    for program in &status.programs {
        let _ = writeln!(
            text,
            "  {:<32} {:<9} runs {:>10}  {:>12} ns",
            program.name,
            if program.attached {
                "attached"
            } else {
                "loaded"
            },
            program.runs,
            program.run_time_ns
        );
    }
    let _ = writeln!(text, "counters:");
    for (name, value) in &status.counters {
        let _ = writeln!(text, "  {name:<32} {value:>10}");
    }
    text
}
