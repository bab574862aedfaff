//! Project tasks. `cargo xtask --help` lists them.

mod apt;
mod cmd;
mod debian;
mod kernels;
mod setup;
mod vm;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::{
    kernels::{DEFAULT_KERNEL, KernelSpec},
    setup::Scope,
};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Set up, build, run and test the enforcer"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what the build and the tests need (apt packages, rust-src,
    /// bpf-linker, virtme-ng, Debian kernels, a Debian root filesystem).
    /// Idempotent.
    Setup {
        /// Kernels to download: `all` or a list such as `6.1,7.2`.
        #[arg(long, default_value = DEFAULT_KERNEL)]
        kernels: String,
    },
    /// Build the agent (release profile) and its kernel programs.
    Build,
    /// Set up what the build needs, build, and run `enforcer run ARGS` in the
    /// foreground (as root). Enforcement stays in force after it stops,
    /// pinned, until `target/release/enforcer unload`.
    Run {
        /// Arguments for `enforcer run`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run every check and test: formatting and lints, unit
    /// tests, host integration tests, and the integration tests inside VMs
    /// booted with Debian kernels and BPF LSM.
    Test {
        /// Kernels for the VM tests: `all` or a list such as `5.10,6.1`.
        #[arg(long, default_value = DEFAULT_KERNEL)]
        kernels: String,
        /// VMs booted at the same time [default: all of them, as far as
        /// the memory available holds them]. Emulated VMs wait on timers and
        /// I/O much of the time: on 2 cores, the four kernels' VMs took 17
        /// minutes all at once and 24 two at a time (with two vCPUs each;
        /// with one, as now, 10 minutes all at once).
        #[arg(long)]
        vm_jobs: Option<usize>,
    },
    /// Measure the agent's overhead on fork+exec and open+close in a
    /// container, with and without the agent side by side, on this host and
    /// in VMs with BPF LSM. Fails when an overhead is above its target.
    Bench {
        /// Kernels for the VM runs: `all` or a list such as `6.1,7.2`.
        #[arg(long, default_value = DEFAULT_KERNEL)]
        kernels: String,
        /// Rounds per workload and side.
        #[arg(long, default_value_t = 10)]
        rounds: u32,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

fn target_dir(workspace: &Path) -> anyhow::Result<PathBuf> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .current_dir(workspace)
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    Ok(metadata.target_directory.into_std_path_buf())
}

fn cargo(workspace: &Path) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace);
    command
}

/// Builds the agent as users run it: the release profile. The tests drive
/// this binary too (it is also an order of magnitude smaller than a debug
/// build, which the VMs read over an uncached 9p root at every start).
fn build(workspace: &Path) -> anyhow::Result<PathBuf> {
    cmd::run(cargo(workspace).args(["build", "--release", "--package", "enforcer"]))?;
    Ok(target_dir(workspace)?.join("release/enforcer"))
}

fn run(task: Task) -> anyhow::Result<()> {
    let workspace = workspace_root();
    match task {
        Task::Setup { kernels } => {
            setup::setup(Scope::Test, &kernels::select(&kernels)?)?;
            eprintln!("setup: done");
            Ok(())
        }
        Task::Build => {
            setup::setup(Scope::Build, &[])?;
            build(&workspace).map(drop)
        }
        Task::Run { args } => {
            setup::setup(Scope::Build, &[])?;
            let agent = build(&workspace)?;
            let mut command = cmd::as_root(&agent.display().to_string());
            command.arg("run").args(&args);
            cmd::show(&command);
            // Replace this process, so that Ctrl-C and SIGTERM reach the agent.
            Err(command.exec()).context("starting the agent")
        }
        Task::Test { kernels, vm_jobs } => test(&workspace, &kernels::select(&kernels)?, vm_jobs),
        Task::Bench { kernels, rounds } => bench(&workspace, &kernels::select(&kernels)?, rounds),
    }
}

fn test(workspace: &Path, kernels: &[&KernelSpec], vm_jobs: Option<usize>) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!(
            "the tests load BPF programs, mount filesystems and boot VMs: run `cargo xtask test` as root"
        );
    }
    let mut stages = Stages::begin();
    let tools = setup::setup(Scope::Test, kernels)?;
    eprintln!("xtask: setup: done ({})", stages.at());
    let mut stage = |name: &str, result| stages.record(name, result);

    stage(
        "format",
        cmd::run(cargo(workspace).args(["fmt", "--all", "--check"])),
    );
    stage(
        "lints",
        cmd::run(cargo(workspace).args(["clippy", "--all-targets", "--", "-D", "warnings"])),
    );
    stage(
        "lints (kernel programs)",
        // `cargo +nightly` only works through rustup's proxy, and $CARGO
        // is the real stable binary.
        cmd::run(Command::new("rustup").current_dir(workspace).args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "enforcer-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])),
    );
    let agent = build(workspace)?;
    let debian = tools
        .debian
        .context("setup did not provide the Debian image")?
        .display()
        .to_string();
    // Unit tests and host integration tests (signal backend on this kernel).
    stage(
        "unit and host tests",
        cmd::run(
            cargo(workspace)
                .arg("test")
                .env("ENFORCER_BIN", &agent)
                .env(DEBIAN_ENV, &debian)
                .env("ENFORCER_TEST_REQUIRE", "root,debian"),
        ),
    );

    let commands = vm_commands(workspace)?;
    let vng = tools.vng.context("setup did not provide virtme-ng")?;
    let work_dir = target_dir(workspace)?.join("vm");
    let env = [
        ("ENFORCER_BIN", agent.display().to_string()),
        (DEBIAN_ENV, debian),
        (
            "ENFORCER_TEST_REQUIRE",
            "root,lsm,podman,cgroup2,containerd,debian".to_owned(),
        ),
        ("RUST_BACKTRACE", "1".to_owned()),
        // Tests of what does not depend on the kernel (sinks) or of volume
        // (the 100,000-exec flood) run on the host only: see
        // `require::not_emulated`.
        ("ENFORCER_TEST_EMULATED", "1".to_owned()),
    ];
    let vm = vm::VmRun {
        vng: &vng,
        workspace,
        work_dir: &work_dir,
        commands: &commands,
        env: &env,
        // The tests run one at a time; the VMs run side by side.
        cpus: 1,
    };
    let jobs = vm::VmJob::all(&tools.kernels);
    let parallel = vm_jobs.unwrap_or_else(|| vm::parallel_by_memory(jobs.len()));
    eprintln!("xtask: {} VMs, {parallel} at a time", jobs.len());
    for (job, result) in vm::run_all(&vm, &jobs, parallel) {
        stage(
            &format!(
                "VM tests on Debian {} ({}), {}",
                job.kernel.name,
                job.kernel.version,
                match job.share {
                    vm::Share::Matrix => "every kernel's tests",
                    vm::Share::DefaultKernelOnly => "the default kernel's own",
                }
            ),
            result,
        );
    }

    stages.finish()
}

/// The test binaries, as the VMs run them.
fn vm_commands(workspace: &Path) -> anyhow::Result<Vec<vm::VmCommand>> {
    Ok(test_binaries(workspace)?
        .into_iter()
        .map(|binary| {
            let mut argv = vec![
                binary.path.display().to_string(),
                "--test-threads=1".to_owned(),
                "--color=never".to_owned(),
            ];
            argv.extend(binary.filter.map(str::to_owned));
            vm::VmCommand {
                argv,
                default_kernel_only: DEFAULT_KERNEL_ONLY.contains(&binary.name.as_str()),
            }
        })
        .collect())
}

/// The stages of a test run: each one's outcome, with the time since the run
/// began (where CI's minutes go).
struct Stages {
    begun: std::time::Instant,
    failures: Vec<String>,
}

impl Stages {
    fn begin() -> Self {
        Self {
            begun: std::time::Instant::now(),
            failures: Vec::new(),
        }
    }

    fn at(&self) -> String {
        let seconds = self.begun.elapsed().as_secs();
        format!("at {}m{:02}s", seconds / 60, seconds % 60)
    }

    fn record(&mut self, name: &str, result: anyhow::Result<()>) {
        match result {
            Ok(()) => eprintln!("xtask: {name}: passed ({})", self.at()),
            Err(error) => {
                eprintln!("xtask: {name}: FAILED ({}): {error:#}", self.at());
                self.failures.push(name.to_owned());
            }
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.failures.is_empty() {
            eprintln!("xtask: all checks and tests passed ({})", self.at());
            Ok(())
        } else {
            bail!("failed: {}", self.failures.join(", "))
        }
    }
}

fn bench(workspace: &Path, kernels: &[&KernelSpec], rounds: u32) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the benchmark loads BPF programs, mounts filesystems and boots VMs: run it as root");
    }
    let tools = setup::setup(Scope::Test, kernels)?;
    let agent = build(workspace)?;
    cmd::run(cargo(workspace).args([
        "build",
        "--release",
        "--package",
        "enforcer-tests",
        "--bins",
    ]))?;
    let bench = target_dir(workspace)?.join("release/bench");
    let rounds = rounds.to_string();
    let mut failures = Vec::new();

    eprintln!("bench: host kernel, agent with --backend auto");
    let host = cmd::run(
        Command::new(&bench)
            .env("ENFORCER_BIN", &agent)
            .args(["--rounds", &rounds]),
    )
    .and_then(|()| {
        // What --signal-mmap-check costs, where the signal backend runs.
        eprintln!("bench: host kernel, signal backend with --signal-mmap-check");
        cmd::run(Command::new(&bench).env("ENFORCER_BIN", &agent).args([
            "--rounds",
            &rounds,
            "--only",
            "open-m",
            "--",
            "--backend",
            "signal",
        ]))
    });
    if let Err(error) = host {
        eprintln!("bench: host: {error:#}");
        failures.push("host".to_owned());
    }

    // Software emulation makes every operation slower; fewer of them keep a
    // round short without changing what is compared.
    let command = vec![
        bench.display().to_string(),
        "--rounds".to_owned(),
        rounds,
        "--exec-count".to_owned(),
        "300".to_owned(),
        "--open-count".to_owned(),
        "30000".to_owned(),
        "--only".to_owned(),
        "exec".to_owned(),
        "--only".to_owned(),
        "exec-d".to_owned(),
        "--only".to_owned(),
        "open".to_owned(),
        // Hosts with containers on roots that are not overlayfs pay this.
        "--only".to_owned(),
        "open-t".to_owned(),
        // Opens with 10,000 vShields loaded, and the time to apply them.
        "--only".to_owned(),
        "open-v".to_owned(),
        // Execs no agent decided while it restarts (the lsm backend's
        // links), fewer restarts than on the host: each start verifies the
        // programs under emulation.
        "--only".to_owned(),
        "restarts".to_owned(),
        "--restarts".to_owned(),
        "5".to_owned(),
        "--".to_owned(),
        "--backend".to_owned(),
        "lsm".to_owned(),
    ];
    let vng = tools.vng.context("setup did not provide virtme-ng")?;
    let work_dir = target_dir(workspace)?.join("vm-bench");
    let env = [("ENFORCER_BIN", agent.display().to_string())];
    let vm = vm::VmRun {
        vng: &vng,
        workspace,
        work_dir: &work_dir,
        commands: &[vm::VmCommand::everywhere(command)],
        env: &env,
        // One VM at a time, with the agent's threads beside the workload.
        cpus: 2,
    };
    for kernel in &tools.kernels {
        eprintln!(
            "bench: Debian {} kernel in a VM, agent with --backend lsm",
            kernel.name
        );
        let job = vm::VmJob {
            kernel,
            share: vm::Share::Matrix,
        };
        if let Err(error) = vm.run(job) {
            eprintln!("bench: {}: {error:#}", kernel.name);
            failures.push(kernel.name.to_owned());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "overhead above target or benchmark failed: {}",
            failures.join(", ")
        )
    }
}

/// Tells the tests where setup put the Debian image (`debian::fetch`).
const DEBIAN_ENV: &str = "ENFORCER_TEST_DEBIAN";

/// Integration test files that run in the default kernel's VM only. They
/// test the agent against container runtimes, the Kubernetes API and policy
/// files, through the same kernel programs the other files test on every
/// kernel: each further VM would add four minutes of emulation and no kernel
/// behaviour the others do not already cover.
const DEFAULT_KERNEL_ONLY: &[&str] = &["podman", "cri", "kubernetes", "reload", "policy_files"];

/// A test binary for the VMs.
struct TestBinary {
    path: PathBuf,
    /// The test target's name (`drift` for `tests/tests/drift.rs`).
    name: String,
    /// The test name filter.
    filter: Option<&'static str>,
}

/// The test binaries the VMs run, each with a test name filter: the agent's
/// unit tests that read the running kernel (`kernel::`: layouts against each
/// kernel's BTF, LSMs, symbols; the others ran on the host and are slow under
/// emulation) and the integration tests.
fn test_binaries(workspace: &Path) -> anyhow::Result<Vec<TestBinary>> {
    let mut command = cargo(workspace);
    command
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args([
            "--package",
            "enforcer",
            "--lib",
            "--package",
            "enforcer-tests",
            "--tests",
        ])
        .stdout(Stdio::piped());
    cmd::show(&command);
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let tests_manifest = workspace.join("tests/Cargo.toml");
    let mut binaries = Vec::new();
    for message in cargo_metadata::Message::parse_stream(std::io::BufReader::new(stdout)) {
        if let cargo_metadata::Message::CompilerArtifact(artifact) = message?
            && artifact.profile.test
            && let Some(executable) = artifact.executable
        {
            let kind = &artifact.target.kind;
            let agent_lib = artifact.target.name == "enforcer"
                && kind.contains(&cargo_metadata::TargetKind::Lib);
            // `--tests` also builds the test harness of every binary and of
            // the agent's own integration tests (the deployment manifest):
            // none reads the kernel, and each costs a start under emulation.
            let integration = artifact.manifest_path.as_std_path() == tests_manifest
                && kind.contains(&cargo_metadata::TargetKind::Test);
            if agent_lib || integration {
                binaries.push(TestBinary {
                    path: executable.into_std_path_buf(),
                    name: artifact.target.name.clone(),
                    filter: agent_lib.then_some("kernel::"),
                });
            }
        }
    }
    if !child.wait()?.success() {
        bail!("building the test binaries failed");
    }
    Ok(binaries)
}
