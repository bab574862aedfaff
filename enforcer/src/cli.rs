//! Command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{backend::BackendChoice, policy::Mode};

/// eBPF runtime enforcer for container hosts: blocks container drift in the
/// kernel and reports every decision as a JSON audit event.
#[derive(Debug, Parser)]
#[command(name = "enforcer", version)]
pub struct Cli {
    /// Log filter for the agent's own logs on stderr (tracing syntax, e.g.
    /// `info` or `enforcer=debug`). Audit events go to stdout regardless.
    #[arg(long, global = true, env = "ENFORCER_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enforce the policy until SIGTERM or SIGINT, writing one JSON audit
    /// event per line to stdout.
    ///
    /// Without a policy file this enforces the built-in policy: drift
    /// prevention for every container. A container process (one whose mount
    /// namespace is not the host's) may not execute a file on overlayfs that
    /// has an upper-layer copy, i.e. that was created, copied or modified
    /// after the container started.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Kernel mechanism: `lsm` refuses the exec with EPERM (needs BPF LSM);
    /// `signal` kills the new program with SIGKILL before its first
    /// instruction; `auto` uses lsm when the kernel allows it and says why
    /// when it does not.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// `enforce` blocks and reports; `audit` only reports what enforce would
    /// block.
    #[arg(long, value_enum, default_value_t = Mode::Enforce)]
    pub mode: Mode,

    /// Mount namespace file of the host, e.g. /proc/1/ns/mnt. Processes in
    /// any other mount namespace are container processes. Default:
    /// /proc/1/ns/mnt, or the agent's own when that cannot be read.
    #[arg(long, value_name = "PATH")]
    pub host_mount_ns: Option<PathBuf>,

    /// BTF of the running kernel, for kernels that do not expose
    /// /sys/kernel/btf/vmlinux (the default). Struct offsets are read from
    /// it; the overlay module's BTF is still read from sysfs when loaded.
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
}
