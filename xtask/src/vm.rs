//! Runs commands (test binaries, benchmarks) inside a Debian kernel booted
//! by virtme-ng (QEMU).
//!
//! The guest sees the host's files, so the freshly built agent and test
//! binaries run there as they are. virtme-ng cannot hand the guest's exit
//! status back without virtio-serial, which Debian's kernels build as a
//! module it does not load, so the guest script prints a sentinel line with
//! the status and this module reads it.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use crate::{
    cmd,
    kernels::{DEFAULT_KERNEL, Kernel},
};

/// Booted with BPF in the LSM list, as a node with BPF LSM enabled is.
const KERNEL_CMDLINE: &str = "lsm=lockdown,capability,landlock,bpf";
const BEGIN: &str = "ENFORCER_VM_BEGIN";
const EXIT: &str = "ENFORCER_VM_EXIT=";
/// A VM's memory.
const VM_MEMORY_MIB: u64 = 2048;
/// Software emulation is slow; a hang must still end the run.
const TIMEOUT: Duration = Duration::from_mins(30);

pub(crate) struct VmRun<'a> {
    pub(crate) vng: &'a Path,
    pub(crate) workspace: &'a Path,
    /// Where scripts and logs go.
    pub(crate) work_dir: &'a Path,
    /// Commands to run, in order. The run fails when any of them does.
    pub(crate) commands: &'a [VmCommand],
    /// Environment for the commands.
    pub(crate) env: &'a [(&'a str, String)],
    /// Virtual CPUs of each VM. Each is a host thread emulating it: where
    /// several VMs share the host's cores, one each is faster (on 2 cores,
    /// five test VMs took 10 minutes with one vCPU each, 14 with two).
    pub(crate) cpus: u32,
}

/// A program and its arguments, for every kernel or for the default one.
pub(crate) struct VmCommand {
    pub(crate) argv: Vec<String>,
    /// Run in the default kernel's VM only.
    pub(crate) default_kernel_only: bool,
}

impl VmCommand {
    pub(crate) const fn everywhere(argv: Vec<String>) -> Self {
        Self {
            argv,
            default_kernel_only: false,
        }
    }
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Which of the commands one VM runs. The default kernel's commands are
/// split over two VMs that run side by side: the matrix share alone is about
/// as long as another kernel's VM, so the last VM no longer ends minutes
/// after the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Share {
    /// The commands for every kernel.
    Matrix,
    /// The commands for the default kernel only.
    DefaultKernelOnly,
}

/// One VM: a kernel and the share of the commands it runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct VmJob<'k> {
    pub(crate) kernel: &'k Kernel,
    pub(crate) share: Share,
}

impl VmJob<'_> {
    /// The VM's name in logs and its directory under the work directory.
    pub(crate) fn name(&self) -> String {
        match self.share {
            Share::Matrix => self.kernel.name.to_owned(),
            Share::DefaultKernelOnly => format!("{}-default-only", self.kernel.name),
        }
    }

    /// The VMs of `kernels`: one per kernel, and the default kernel's second.
    pub(crate) fn all(kernels: &[Kernel]) -> Vec<VmJob<'_>> {
        let mut jobs: Vec<_> = kernels
            .iter()
            .map(|kernel| VmJob {
                kernel,
                share: Share::Matrix,
            })
            .collect();
        jobs.extend(
            kernels
                .iter()
                .filter(|kernel| kernel.name == DEFAULT_KERNEL)
                .map(|kernel| VmJob {
                    kernel,
                    share: Share::DefaultKernelOnly,
                }),
        );
        jobs
    }
}

/// Set in the VMs of other kernels than the default one (see
/// `require::not_other_kernel` in the tests).
const OTHER_KERNEL_ENV: &str = "ENFORCER_TEST_OTHER_KERNEL";

impl VmRun<'_> {
    fn script(&self, job: VmJob<'_>) -> String {
        let kernel = job.kernel;
        let mut script =
            String::from("#!/bin/sh\n# Runs inside the VM; written by cargo xtask test.\n");
        let _ = writeln!(
            script,
            "cd {} || exit 1",
            shell_quote(&self.workspace.display().to_string())
        );
        for (key, value) in self.env {
            let _ = writeln!(script, "export {key}={}", shell_quote(value));
        }
        if kernel.name != DEFAULT_KERNEL {
            let _ = writeln!(script, "export {OTHER_KERNEL_ENV}=1");
        }
        let _ = writeln!(
            script,
            "echo \"{BEGIN} kernel=$(uname -r) expected={} lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)\"",
            kernel.version
        );
        script.push_str("status=0\n");
        for command in self.commands {
            let wanted = match job.share {
                Share::Matrix => !command.default_kernel_only,
                Share::DefaultKernelOnly => command.default_kernel_only,
            };
            if !wanted {
                let _ = writeln!(
                    script,
                    "echo \"== {} runs in another VM\"",
                    command.argv.first().map_or("", String::as_str)
                );
                continue;
            }
            let line: Vec<String> = command.argv.iter().map(|word| shell_quote(word)).collect();
            let line = line.join(" ");
            // Each command's time goes to the log: where a VM's minutes go.
            let _ = writeln!(
                script,
                "echo \"== {}\"\nstarted=$(date +%s)\n{line} || status=1\n\
                 echo \"== took $(($(date +%s) - started)) s\"",
                line.replace('"', "'")
            );
        }
        let _ = writeln!(script, "echo \"{EXIT}$status\"");
        script
    }

    /// Boots `job`'s kernel, runs its commands, and fails unless all
    /// succeeded.
    pub(crate) fn run(&self, job: VmJob<'_>) -> anyhow::Result<()> {
        let kernel = job.kernel;
        let name = job.name();
        let dir = self.work_dir.join(&name);
        fs::create_dir_all(&dir)?;
        let script = dir.join("run.sh");
        fs::write(&script, self.script(job))?;
        let log_path = dir.join("console.log");
        let mut log = fs::File::create(&log_path)?;

        let mut command = Command::new(self.vng);
        // vng runs its companion programs (virtme-run) by name: they sit
        // beside it in the private virtualenv, which is not on the PATH.
        if let Some(bin) = self.vng.parent() {
            let path = std::env::var("PATH").unwrap_or_default();
            command.env("PATH", format!("{}:{path}", bin.display()));
        }
        command
            .arg("-v")
            .arg("-r")
            .arg(&kernel.vmlinuz)
            .args(["--memory", &format!("{VM_MEMORY_MIB}M")])
            .args(["--cpus", &self.cpus.to_string()])
            .args(["--append", KERNEL_CMDLINE])
            .arg("--exec")
            .arg(format!("sh {}", shell_quote(&script.display().to_string())));
        // /dev/kvm may exist without being usable (nested virtualisation);
        // software emulation always works. ENFORCER_VM_KVM=1 opts in to KVM.
        if std::env::var("ENFORCER_VM_KVM").as_deref() != Ok("1") {
            command.arg("--disable-kvm");
        }
        command
            .current_dir(self.workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd::show(&command);
        eprintln!(
            "vm: {name}: Debian {} kernel {} (log: {})",
            kernel.name,
            kernel.version,
            log_path.display()
        );
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.vng.display()))?;

        let exit_status = stream(&mut child, &mut log, &name, started)
            .with_context(|| format!("log: {}", log_path.display()))?;
        let _ = child.wait();
        eprintln!("vm: {name} finished in {:.0?}", started.elapsed());
        match exit_status {
            Some(0) => Ok(()),
            Some(status) => bail!(
                "a command failed in the {name} VM (status {status}); log: {}",
                log_path.display()
            ),
            None => bail!(
                "the {name} VM ended without reporting a test result (boot failure?); log: {}",
                log_path.display()
            ),
        }
    }
}

/// Runs `jobs` (see [`VmJob::all`]), `parallel` VMs at a time, in the order
/// given; returns each job's result in that order.
pub(crate) fn run_all<'k>(
    vm: &VmRun<'_>,
    jobs: &[VmJob<'k>],
    parallel: usize,
) -> Vec<(VmJob<'k>, anyhow::Result<()>)> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<anyhow::Result<()>>>> =
        Mutex::new(jobs.iter().map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..parallel.clamp(1, jobs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&job) = jobs.get(index) else { break };
                    let result = vm.run(job);
                    results.lock().unwrap_or_else(PoisonError::into_inner)[index] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    jobs.iter()
        .zip(results)
        .map(|(&job, result)| (job, result.unwrap_or_else(|| Err(anyhow!("not run")))))
        .collect()
}

/// How many of `jobs` VMs to boot at once: all of them, as far as the
/// memory available holds each VM's memory and QEMU's own (about half a GiB
/// more), and at least one.
pub(crate) fn parallel_by_memory(jobs: usize) -> usize {
    let available_mib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| available_mib(&meminfo));
    let per_vm = VM_MEMORY_MIB + 512;
    available_mib
        .map_or(jobs, |mib| {
            usize::try_from(mib / per_vm).unwrap_or(usize::MAX)
        })
        .clamp(1, jobs.max(1))
}

/// `MemAvailable` of /proc/meminfo, in MiB.
fn available_mib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let kib = line
            .strip_prefix("MemAvailable:")?
            .trim()
            .strip_suffix("kB")?;
        kib.trim().parse::<u64>().ok().map(|kib| kib / 1024)
    })
}

/// Copies the VM's output to the log and the test output (after the
/// sentinel, without kernel console lines) to stdout; returns the status the
/// guest reported.
fn stream(
    child: &mut std::process::Child,
    log: &mut fs::File,
    kernel: &str,
    started: Instant,
) -> anyhow::Result<Option<i32>> {
    // stdout and stderr both go through one channel so the log keeps their
    // interleaving.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let pipes: [Option<Box<dyn std::io::Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    let readers: Vec<_> = pipes
        .into_iter()
        .flatten()
        .map(|pipe| {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);

    let mut begun = false;
    let mut exit_status = None;
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                // Seconds since the VM started: with `--test-threads=1`,
                // the gap between two results is the second test's time.
                writeln!(log, "{:>7.1} {line}", started.elapsed().as_secs_f64())?;
                begun |= line.contains(BEGIN);
                if let Some(status) = line.trim().strip_prefix(EXIT) {
                    exit_status = status.trim().parse::<i32>().ok();
                }
                if begun && !is_kernel_message(&line) {
                    println!("[{kernel}] {line}");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if started.elapsed() > TIMEOUT {
                    let _ = child.kill();
                    bail!("VM with kernel {kernel} timed out after {TIMEOUT:?}");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
    Ok(exit_status)
}

/// Kernel console lines look like `[    2.802955] text`.
fn is_kernel_message(line: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(stamp, _)| stamp.trim().split_once('.'))
        .is_some_and(|(seconds, micros)| digits(seconds) && micros.len() == 6 && digits(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_kernel_console_lines() {
        assert!(is_kernel_message(
            "[    2.802955] ACPI: \\_SB_.GSIF: Enabled at IRQ 21"
        ));
        assert!(!is_kernel_message("test signal_backend ... ok"));
        assert!(!is_kernel_message("[6.1] test x ... ok and more"));
    }

    #[test]
    fn default_kernel_only_commands_run_in_a_vm_of_their_own() {
        let commands = [
            VmCommand::everywhere(vec!["/t/drift".to_owned()]),
            VmCommand {
                argv: vec!["/t/podman".to_owned()],
                default_kernel_only: true,
            },
        ];
        let vm = VmRun {
            vng: Path::new("vng"),
            workspace: Path::new("/w"),
            work_dir: Path::new("/w/target/vm"),
            commands: &commands,
            env: &[],
            cpus: 1,
        };
        let kernel = |name| Kernel {
            name,
            version: String::new(),
            vmlinuz: std::path::PathBuf::new(),
        };
        let (default, other) = (kernel(DEFAULT_KERNEL), kernel("5.10"));
        let jobs = VmJob::all(std::slice::from_ref(&default));
        assert_eq!(jobs.len(), 2);
        let script = |job: VmJob<'_>| (job.name(), vm.script(job));
        let (name, matrix) = script(jobs[0]);
        assert_eq!(name, DEFAULT_KERNEL);
        assert!(matrix.contains("'/t/drift' || status=1"));
        assert!(!matrix.contains("'/t/podman' || status=1"));
        assert!(!matrix.contains(OTHER_KERNEL_ENV));
        let (name, default_only) = script(jobs[1]);
        assert_eq!(name, format!("{DEFAULT_KERNEL}-default-only"));
        assert!(!default_only.contains("'/t/drift' || status=1"));
        assert!(default_only.contains("'/t/podman' || status=1"));
        assert!(!default_only.contains(OTHER_KERNEL_ENV));

        let jobs = VmJob::all(std::slice::from_ref(&other));
        assert_eq!(jobs.len(), 1);
        let (name, other) = script(jobs[0]);
        assert_eq!(name, "5.10");
        assert!(other.contains("'/t/drift' || status=1"));
        assert!(!other.contains("'/t/podman' || status=1"));
        assert!(other.contains("/t/podman runs in another VM"));
        assert!(other.contains(&format!("export {OTHER_KERNEL_ENV}=1")));
    }

    #[test]
    fn vms_at_once_as_far_as_memory_holds_them() {
        let meminfo = "MemTotal:       24000000 kB\nMemAvailable:    6000000 kB\n";
        // 5,859 MiB hold two VMs of 2 GiB and QEMU's own.
        assert_eq!(available_mib(meminfo), Some(5859));
        assert_eq!(available_mib("MemTotal: 1 kB\n"), None);
        assert!(parallel_by_memory(0) >= 1);
        assert!(parallel_by_memory(5) <= 5);
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
