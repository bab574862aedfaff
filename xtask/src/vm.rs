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

impl VmRun<'_> {
    fn script(&self, kernel: &Kernel) -> String {
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
        let _ = writeln!(
            script,
            "echo \"{BEGIN} kernel=$(uname -r) expected={} lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)\"",
            kernel.version
        );
        script.push_str("status=0\n");
        for command in self.commands {
            if command.default_kernel_only && kernel.name != DEFAULT_KERNEL {
                let _ = writeln!(
                    script,
                    "echo \"== {} runs in the {DEFAULT_KERNEL} VM only\"",
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

    /// Boots `kernel`, runs the commands, and fails unless all succeeded.
    pub(crate) fn run(&self, kernel: &Kernel) -> anyhow::Result<()> {
        let dir = self.work_dir.join(kernel.name);
        fs::create_dir_all(&dir)?;
        let script = dir.join("run.sh");
        fs::write(&script, self.script(kernel))?;
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
            .args(["--memory", "2G", "--cpus", "2", "--append", KERNEL_CMDLINE])
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
            "vm: Debian {} kernel {} (log: {})",
            kernel.name,
            kernel.version,
            log_path.display()
        );
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", self.vng.display()))?;

        let exit_status = stream(&mut child, &mut log, kernel.name, started)
            .with_context(|| format!("log: {}", log_path.display()))?;
        let _ = child.wait();
        eprintln!(
            "vm: kernel {} finished in {:.0?}",
            kernel.name,
            started.elapsed()
        );
        match exit_status {
            Some(0) => Ok(()),
            Some(status) => bail!(
                "a command failed in the {} kernel VM (status {status}); log: {}",
                kernel.name,
                log_path.display()
            ),
            None => bail!(
                "the {} kernel VM ended without reporting a test result (boot failure?); log: {}",
                kernel.name,
                log_path.display()
            ),
        }
    }
}

/// Runs `vm` on every kernel, `jobs` VMs at a time; returns each kernel's
/// result in the order of `kernels`. The default kernel's VM, which runs the
/// most, starts first: the others fill the remaining slots meanwhile.
pub(crate) fn run_all<'k>(
    vm: &VmRun<'_>,
    kernels: &'k [Kernel],
    jobs: usize,
) -> Vec<(&'k Kernel, anyhow::Result<()>)> {
    let mut order: Vec<usize> = (0..kernels.len()).collect();
    order.sort_by_key(|&index| kernels[index].name != DEFAULT_KERNEL);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<anyhow::Result<()>>>> =
        Mutex::new(kernels.iter().map(|_| None).collect());
    thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, kernels.len().max(1)) {
            scope.spawn(|| {
                while let Some(&index) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let kernel = &kernels[index];
                    let result = vm.run(kernel);
                    results.lock().unwrap_or_else(PoisonError::into_inner)[index] = Some(result);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(PoisonError::into_inner);
    kernels
        .iter()
        .zip(results)
        .map(|(kernel, result)| (kernel, result.unwrap_or_else(|| Err(anyhow!("not run")))))
        .collect()
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
    fn default_kernel_only_commands_run_in_the_default_kernel_only() {
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
        };
        let kernel = |name| Kernel {
            name,
            version: String::new(),
            vmlinuz: std::path::PathBuf::new(),
        };
        let default = vm.script(&kernel(DEFAULT_KERNEL));
        assert!(default.contains("'/t/drift' || status=1"));
        assert!(default.contains("'/t/podman' || status=1"));
        let other = vm.script(&kernel("5.10"));
        assert!(other.contains("'/t/drift' || status=1"));
        assert!(!other.contains("'/t/podman' || status=1"));
        assert!(other.contains("/t/podman runs in the"));
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
