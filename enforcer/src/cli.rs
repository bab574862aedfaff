//! Command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{backend::BackendChoice, policy::Mode, tracking::WriteTracking};

/// eBPF runtime enforcer for container hosts: blocks container drift in the
/// kernel and reports every decision as a JSON audit event.
#[derive(Debug, Parser)]
#[command(name = "enforcer", version)]
pub struct Cli {
    /// Log filter for the agent's own logs on stderr (tracing syntax, e.g.
    /// `info` or `enforcer=debug`). Audit events go to their sinks regardless.
    #[arg(long, global = true, env = "ENFORCER_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

/// A `DaemonSet` by namespace and name (`--daemonset`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonSetRef {
    pub namespace: String,
    pub name: String,
}

fn parse_daemonset(text: &str) -> Result<DaemonSetRef, String> {
    match text.split_once('/') {
        Some((namespace, name))
            if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
        {
            Ok(DaemonSetRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once, at start; the agent's options are most of it"
)]
pub enum Command {
    /// Enforce the policy, writing one JSON audit event per line to stdout,
    /// or to the sinks --sink names. SIGTERM and SIGINT stop the agent, not
    /// enforcement: the kernel keeps enforcing the policy last in force
    /// until the next agent takes over or `enforcer unload` (see
    /// --pin-dir).
    ///
    /// Without --policy this enforces the built-in policy, tuned by the flags
    /// below: drift prevention for every container. A container process (one whose mount
    /// namespace and root directory are not the host's) may not run, by exec
    /// or by an executable mapping (the dynamic loader, `LD_PRELOAD`, `dlopen`,
    /// mprotect), a file that is not from its image: a file on its overlayfs
    /// root with an upper-layer copy (created, copied or modified after the
    /// container started), a memfd, a file on a writable mount other than
    /// its root filesystem, or, on a root that is not overlayfs, a file that a
    /// container process created, wrote, made executable, renamed or linked
    /// (see --track-writes).
    Run(RunArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Work with the vShields of the running agent.
    #[command(subcommand, name = "vshield")]
    VShield(VShieldCommand),
    /// OCI runtime hooks: put a container's policy in the kernel before its
    /// first exec.
    #[command(subcommand)]
    Hook(HookCommand),
    /// Show the running agent's backend (and why, after a fallback), kernel,
    /// programs (attached or only loaded, with run counts and times while
    /// BPF statistics are on), policy in force and counters, asked over the
    /// control socket.
    Status {
        /// The agent's control socket (see `run --control-socket`).
        #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop enforcing: remove the kernel programs and maps an agent pinned
    /// (they outlive it), printing each one removed. Nothing pinned is not
    /// an error. An agent still running keeps enforcing until it exits.
    Unload {
        /// The agent's pin directory (see `run --pin-dir`).
        #[arg(long, value_name = "DIR", default_value = crate::pins::DEFAULT_DIR)]
        pin_dir: PathBuf,
    },
    /// Wait until the running agent has written every audit event the
    /// kernel recorded before this command asked (over the control socket),
    /// e.g. before reading or rotating its output; print how many records
    /// the agent has written since it started.
    Flush {
        /// The agent's control socket (see `run --control-socket`).
        #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// The hook itself, run by the OCI runtime (crun, runc) at the
    /// `createRuntime` stage, with the container's state on stdin: tells the
    /// running agent that the container is about to start and waits until
    /// the agent has placed it (its image known, its vShields' scope in the
    /// kernel), so the policy decides its very first exec. Without an answer
    /// (no agent, 5 s timeout) the container starts anyway, with every
    /// image-selected vShield applying to it until the agent finds it, unless
    /// --fail-closed.
    Oci {
        /// The agent's control socket (see `run --control-socket`).
        #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Refuse to start the container (exit 1) when the agent cannot
        /// place it.
        #[arg(long)]
        fail_closed: bool,
    },
    /// Print the hook's configuration for Podman and CRI-O
    /// (`/usr/share/containers/oci/hooks.d/enforcer.json`, or a directory given
    /// with `--hooks-dir`), running this binary.
    OciConfig {
        /// The agent's control socket the hook asks.
        #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Let the hook refuse containers the agent cannot place.
        #[arg(long)]
        fail_closed: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VShieldCommand {
    /// Every vShield in force in the running agent (asked over its control
    /// socket): name, vulnerability, mode, operations, scope, the number of
    /// files it shields, and how many uses it decided since it came into
    /// force.
    List {
        /// The agent's control socket (see `run --control-socket`).
        #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the agent's reply as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Turn a Trivy JSON report (`trivy image --format json`) into vShield
    /// policy YAML: one vShield per vulnerability and package, naming the
    /// package's files. OS packages' files are read from the package
    /// database in the image's root directory (--root; dpkg, apk, and rpm's
    /// `SQLite`, Berkeley DB and ndb databases); language packages name their
    /// file in the report (jars, Go and Rust binaries, Node package
    /// directories, Python distributions through their RECORD). Findings that
    /// cannot become a vShield are listed on stderr with the reason.
    FromTrivy {
        /// The report (JSON).
        #[arg(value_name = "REPORT.json")]
        report: PathBuf,
        /// The image's root directory (an unpacked image, or a container's
        /// root), where package databases are read.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// `audit` reports uses of the vulnerable files; `enforce` blocks
        /// them. Review what audit reports before enforcing.
        #[arg(long, value_enum, default_value_t = Mode::Audit)]
        mode: Mode,
        /// Select every container instead of the report's image.
        #[arg(long)]
        every_container: bool,
        /// Write the policy here instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files (files, and directories of *.yaml and *.yml files;
    /// several YAML documents per file): print every problem with its file,
    /// line, column and field, and exit 1 when there is any.
    Check {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of policy documents, for editors.
    Schema,
}

#[derive(Debug, clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each is a command-line switch of its own"
)]
pub struct RunArgs {
    /// Read options from this YAML file: its keys are the long names of
    /// these options (`mode: audit`, `allow-path: [/opt/**]`,
    /// `metrics-address: 0.0.0.0:9464`), lists for repeatable ones,
    /// true/false for switches; `sink` items may be mappings (`type: file`,
    /// `path: ...`, options). Options given on the command line, or in their
    /// environment variable, win over the file. Read once at start.
    #[arg(long, value_name = "FILE", env = "ENFORCER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Kernel mechanism: `lsm` refuses the exec with EPERM (needs BPF LSM);
    /// `signal` kills the new program with SIGKILL before its first
    /// instruction; `auto` uses lsm when the kernel allows it and says why
    /// when it does not.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Policy files (files, or directories of *.yaml and *.yml files),
    /// checked as `enforcer policy check` does; repeatable. Replaces the
    /// built-in policy and the drift flags below. The files are watched: a
    /// valid change is put in force within a second, by changing only the
    /// kernel map entries that differ; an invalid one is refused with an
    /// error (log and audit record) and the policy in force stays in force.
    /// SIGHUP reloads them too, and also looks the vShields' files up again
    /// in image layers and containers that appeared since. `DriftPolicy`s: one
    /// for every container (empty selector) and up to 31 that select
    /// containers; the first in policy order that selects a container
    /// applies to it. vShields: for every container, for the host
    /// (`selector: {host: true}`), or for the containers a selector picks.
    /// Selectors pick by image, Kubernetes namespace, pod labels and
    /// container kind (`images`, `namespaces`, `podLabels`,
    /// `containerKinds`: regular, init, ephemeral; labels and kinds need
    /// --kubernetes-node). A container's image is known once the runtime's
    /// OCI hook announced it (`enforcer hook oci`) or the agent found its
    /// cgroup (within a second), its pod's labels once the Kubernetes API
    /// reported the pod; until a selector can tell, every vShield with a
    /// selector applies to the container, and the strictest of all
    /// `DriftPolicy`s.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = [
            "mode",
            "allow_memfd",
            "allow_writable_mounts",
            "allow_path",
            "audit_exec_sessions"
        ]
    )]
    pub policy: Vec<PathBuf>,

    /// `enforce` blocks and reports; `audit` only reports what enforce would
    /// block.
    #[arg(long, value_enum, default_value_t = Mode::Enforce)]
    pub mode: Mode,

    /// A process whose mount namespace and root directory are the host's.
    /// A process with another mount namespace and another root is a
    /// container process. When /proc/PID cannot be read, the agent's own are
    /// used, with a warning.
    #[arg(long, value_name = "PID", default_value_t = crate::kernel::host::DEFAULT_HOST_PID)]
    pub host_pid: u32,

    /// Allow containers to execute memfd files (fileless execution with
    /// `memfd_create` + `fexecve`). Executable mappings of memfds (JITs) are
    /// always allowed.
    #[arg(long)]
    pub allow_memfd: bool,

    /// Allow containers to run files from writable mounts other than their
    /// root filesystem: tmpfs such as /dev/shm, emptyDir and other volumes.
    /// Read-only mounts are always allowed.
    #[arg(long)]
    pub allow_writable_mounts: bool,

    /// Allow containers to run files that are not from their image when the
    /// file's path in the container matches GLOB (repeatable). `*`, `?` and
    /// `[...]` stay within one path component, `**` spans components,
    /// `{a,b}` matches either. The path is the file's real path in the
    /// container's mount namespace (symlinks resolved; a chroot does not
    /// change it); paths longer than 1024 bytes, or 64 components and mount
    /// crossings, are never allowed. Does not cover memfds (see
    /// --allow-memfd).
    #[arg(long, value_name = "GLOB")]
    pub allow_path: Vec<String>,

    /// Audit, not block, drift in exec sessions (`kubectl exec`, `podman
    /// exec`, `docker exec`): processes under one that entered the running
    /// container from outside, told in the kernel when the file is about to
    /// run. A process an exec session leaves behind (orphaned, adopted by
    /// the container's first process) is the container's own from then on;
    /// containers in the host's pid namespace have no exec sessions.
    #[arg(long)]
    pub audit_exec_sessions: bool,

    /// When to track what container processes write on roots that are not
    /// overlayfs (btrfs or zfs snapshotters, bind-mounted directories), where
    /// no upper layer records it. Tracking puts a BPF LSM program on every
    /// `open()`; `auto` attaches it once a container runs from such a root
    /// (found at start-up, or when its first program runs: writes in the
    /// moment before the agent has attached are not tracked); `always` at
    /// start-up; `never` leaves such roots unchecked. Needs the lsm backend.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = WriteTracking::Auto)]
    pub track_writes: WriteTracking,

    /// Signal backend only: also decide executable mappings of drift files
    /// (the dynamic loader running a dropped program, `LD_PRELOAD` and `dlopen`
    /// of a dropped library, `mprotect` to executable on 5.17+) with a
    /// program on the raw `sys_enter` tracepoint, which kills the process
    /// before its `mmap` or `mprotect` returns. Off by
    /// default: every system call on the host then pays for it (about 5 % on
    /// an `open()`+`close()` loop; see the README's benchmarks). The lsm backend
    /// always decides mappings.
    #[arg(long)]
    pub signal_mmap_check: bool,

    /// Where container runtimes keep image layers: a glob whose matches are
    /// layer root directories (repeatable; replaces the defaults). The files
    /// of container vShields are looked up in every layer found here and in
    /// the root of every running container, so that a vShield also covers
    /// containers started later from those images. The directory before each
    /// glob's first wildcard is watched: files in layers that appear later
    /// are looked up too.
    #[arg(
        long,
        value_name = "GLOB",
        default_values_t = crate::resolve::DEFAULT_IMAGE_STORES.iter().map(|s| (*s).to_owned())
    )]
    pub image_store: Vec<String>,

    /// Where to listen for `enforcer vshield list` (a Unix socket, root
    /// only). The agent runs without it, with a warning, when it cannot
    /// listen there.
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,

    /// Where the kernel programs and maps are pinned (a directory on a BPF
    /// filesystem, mounted on /sys/fs/bpf when missing there). Enforcement
    /// stays in force when the agent stops, for any reason (SIGTERM,
    /// SIGINT, SIGKILL, a crash): the next agent takes it over without a
    /// gap, and only `enforcer unload` removes it.
    #[arg(long, value_name = "DIR", default_value = crate::pins::DEFAULT_DIR)]
    pub pin_dir: PathBuf,

    /// The `DaemonSet` this agent runs in, as NAMESPACE/NAME. When the agent
    /// is stopped and the `DaemonSet` is gone or being deleted (an uninstall),
    /// or the API rejects the agent's service account (deleted with its
    /// namespace), the agent unloads what it pinned, as `enforcer unload`
    /// does. A rolling update, a deleted pod or a node drain leaves the
    /// `DaemonSet` in place, and enforcement with it; so does an API that does
    /// not answer within 5 s (the log says so). Uses --kubeconfig when given.
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_daemonset)]
    pub daemonset: Option<DaemonSetRef>,

    /// Podman's storage root (`graphroot`), where container and image
    /// records name each Podman container's image.
    #[arg(long, value_name = "DIR", default_value = crate::container::podman::DEFAULT_STORAGE)]
    pub podman_storage: PathBuf,

    /// A CRI runtime's socket (containerd's CRI plugin, CRI-O; repeatable),
    /// asked for the names, images and pods (namespace, name, labels) of its
    /// containers: Kubernetes containers are then selected by image,
    /// namespace and pod labels without the Kubernetes API. A socket that
    /// does not exist (a runtime this node does not run) is looked for again
    /// every 5 s.
    #[arg(
        long,
        value_name = "PATH",
        default_values_t = crate::container::cri::DEFAULT_SOCKETS.iter().map(|s| (*s).to_owned()),
        conflicts_with = "no_cri"
    )]
    pub cri_socket: Vec<String>,

    /// Do not read any CRI runtime's socket.
    #[arg(long)]
    pub no_cri: bool,

    /// This node's name, as Kubernetes knows it: the agent then watches the
    /// pods the API server schedules here (field selector
    /// `spec.nodeName=NODE`) for their namespaces, labels, container names,
    /// container kinds and image digests, which select vShields and
    /// `DriftPolicy`s (`namespaces`, `podLabels`, `containerKinds`)
    /// and fill the events' `kubernetes.*` fields. In a `DaemonSet`, set
    /// `NODE_NAME` from the downward API (`fieldRef: spec.nodeName`). Without
    /// it, pods are named from the CRI API (`--cri-socket`: labels too, but
    /// no container kinds) and their runtime's OCI annotations.
    #[arg(long, value_name = "NODE", env = "NODE_NAME")]
    pub kubernetes_node: Option<String>,

    /// The kubeconfig for the Kubernetes API (with --kubernetes-node).
    /// Default: the pod's service account in a cluster, else $KUBECONFIG
    /// or ~/.kube/config.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Serve Prometheus metrics (`/metrics`), liveness (`/healthz`: the
    /// agent's main loop runs) and readiness (`/readyz`: the programs are
    /// attached and the policy in force) over HTTP at this address, e.g.
    /// `0.0.0.0:9464`. Also turns on the kernel's BPF statistics, which time
    /// every program run, for the programs' run counts and times. Off when
    /// not given.
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub metrics_address: Option<std::net::SocketAddr>,

    /// Where audit records go (repeatable: several sinks at once, each
    /// record to each, in order). Without --sink: stdout. Options follow the
    /// target as `,KEY=VALUE`; defaults in brackets.
    ///
    /// `stdout`: JSON lines on standard output.
    ///
    /// `file:PATH`: JSON lines in PATH (its directory must exist; mode
    /// 0600), rotated by size between records: `max-size` [100MiB], `keep`
    /// rotated files, PATH.1 the newest [5].
    ///
    /// `syslog[:ADDRESS]`: RFC 5424 messages to `unix:PATH` [`unix:/dev/log`],
    /// `udp:HOST:PORT` or `tcp:HOST:PORT` (octet-counted frames): `facility`
    /// (user, daemon, auth, authpriv, local0..local7) [local0], `app-name`
    /// [enforcer].
    ///
    /// `webhook:URL`: batches `POST`ed as JSON arrays, in order, retried with
    /// backoff, spooled on disk while the receiver is down and replayed
    /// after it (and after a restart): `batch` records per request [500],
    /// `batch-max-size` of a request's body [1MiB; a receiver's 413 halves
    /// the batch], `batch-wait` for a partial batch [1s], `timeout` per
    /// request [10s],
    /// `spool-dir` [`/var/lib/enforcer/spool/webhook`], `spool-max-size`
    /// [256MiB], `drain-timeout` at shutdown [5s], `header='Name: value'`
    /// (one extra request header, e.g. `Authorization: Bearer TOKEN`).
    ///
    /// Every sink takes `format=ecs` (Elastic Common Schema) [ecs] or
    /// `format=ocsf`. In the config file, `sink:` is a list of these
    /// strings, or of mappings with `type` and the same options as keys.
    #[arg(long, value_name = "KIND[:TARGET][,KEY=VALUE]...", value_parser = crate::audit::sink::spec::parse)]
    pub sink: Vec<crate::audit::sink::spec::SinkSpec>,

    /// Rate limit of decision records, in the kernel: at most BURST records
    /// per WINDOW for one container, file and decision (`10/10s`, the
    /// default; `off`). The decisions are always carried out; only their
    /// records are left out. Those are counted (`kernel.events_suppressed`),
    /// the key's next record says how many of its kind were left out before
    /// it (`enforcer.suppressed`), and an accounting record reports them.
    #[arg(long, value_name = "BURST/WINDOW", default_value_t = crate::audit::limit::RateLimit::DEFAULT)]
    pub rate_limit: crate::audit::limit::RateLimit,

    /// How often the agent writes an accounting record (`event.dataset`
    /// `enforcer.accounting`) when records were lost or left out since the
    /// last one: suppressed by the rate limit, lost in a full ring buffer,
    /// dropped while the sinks were behind, failed sink writes; with the
    /// totals since start. Nothing is lost without a record saying so.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub accounting_interval: std::time::Duration,

    /// BTF of the running kernel, for kernels that do not expose
    /// /sys/kernel/btf/vmlinux (the default). Struct offsets are read from
    /// it; the overlay module's BTF is still read from sysfs when loaded.
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::{Parser as _, error::ErrorKind};

    use super::{Cli, Command};

    #[test]
    fn exec_sessions_are_audited_by_a_switch_of_the_built_in_policy_only() {
        let cli = Cli::try_parse_from(["enforcer", "run", "--audit-exec-sessions"])
            .expect("a switch of run");
        let Command::Run(args) = cli.command else {
            panic!("not run: {:?}", cli.command);
        };
        assert!(args.audit_exec_sessions);
        // With policy files, their DriftPolicies say it.
        let error = Cli::try_parse_from([
            "enforcer",
            "run",
            "--policy",
            "policy.yaml",
            "--audit-exec-sessions",
        ])
        .expect_err("conflicts with --policy");
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
    }

    /// The field names a serde-derived struct accepts: derived
    /// deserializers hand them to `deserialize_struct`.
    fn option_names<'de, T: serde::Deserialize<'de>>() -> &'static [&'static str] {
        struct Fields;
        #[derive(Debug)]
        struct Caught(&'static [&'static str]);
        impl std::fmt::Display for Caught {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl std::error::Error for Caught {}
        impl serde::de::Error for Caught {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Self(&[])
            }
        }
        impl<'de> serde::Deserializer<'de> for Fields {
            type Error = Caught;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Caught> {
                Err(Caught(&[]))
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Caught> {
                Err(Caught(fields))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
                bytes byte_buf option unit unit_struct newtype_struct seq tuple
                tuple_struct map enum identifier ignored_any
            }
        }
        match T::deserialize(Fields) {
            Err(Caught(fields)) => fields,
            Ok(_) => panic!("nothing to deserialize from"),
        }
    }

    #[test]
    fn sink_help_names_every_option_of_every_sink() {
        use clap::CommandFactory as _;

        use crate::audit::sink::{file::FileConfig, syslog::SyslogConfig, webhook::WebhookConfig};

        let command = Cli::command();
        let run = command.find_subcommand("run").expect("run");
        let sink = run
            .get_arguments()
            .find(|arg| arg.get_id() == "sink")
            .expect("--sink");
        let help = sink.get_long_help().expect("long help").to_string();
        for (kind, fields) in [
            ("file", option_names::<FileConfig>()),
            ("syslog", option_names::<SyslogConfig>()),
            ("webhook", option_names::<WebhookConfig>()),
        ] {
            assert!(!fields.is_empty(), "{kind}: no options found");
            for field in fields {
                let option = field.replace('_', "-");
                // The target is the kind's main option (`file:PATH`).
                let named = matches!(
                    (kind, option.as_str()),
                    ("file", "path") | ("syslog", "address") | ("webhook", "url")
                ) || help.contains(&format!("`{option}`"))
                    || help.contains(&format!("`{option}="));
                assert!(
                    named,
                    "--sink's help does not name {kind}'s option `{option}`"
                );
            }
        }
    }
}
