//! Drives the real `enforcer` binary.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::require::patience;

/// Where the agent binary is: `ENFORCER_BIN`, or the release build in the
/// target directory of the test binary (`target/release/enforcer`), where
/// `cargo build --release -p enforcer` puts it.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENFORCER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/TEST -> target
    let path = exe
        .ancestors()
        .nth(3)
        .map(|target| target.join("release/enforcer"))
        .expect("test binary is in target/<profile>/deps");
    assert!(
        path.exists(),
        "{} does not exist: run `cargo build --release -p enforcer` first (cargo xtask test does)",
        path.display()
    );
    path
}

/// The agent's log line that says enforcement is on.
const READY: &str = "enforcer ready";
/// Start-up includes parsing kernel BTF and verifying the programs, which
/// takes seconds under QEMU's software emulation (stretched there by
/// [`patience`]).
const READY_TIMEOUT: Duration = Duration::from_mins(1);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the harness waits for the records a flush counted to reach it.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(20);

/// A pin directory of the tests' own (`enforcer run --pin-dir`): what an
/// agent pins there outlives it, so every agent of the tests gets one and
/// it is unloaded (`enforcer unload`) when this is dropped. Directories that
/// test processes no longer running left behind are unloaded first, and
/// this process's when it exits (the shared agent is never dropped).
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

const PIN_ROOT: &str = "/sys/fs/bpf";
const PIN_PREFIX: &str = "enforcer-test-";

impl PinDir {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        static CLEANUP: std::sync::Once = std::sync::Once::new();
        CLEANUP.call_once(|| {
            unload_pin_dirs(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            // SAFETY: registers a function that takes no arguments and
            // only removes files.
            unsafe {
                libc::atexit(unload_own_pin_dirs);
            }
        });
        let path = PathBuf::from(PIN_ROOT).join(format!(
            "{PIN_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Self { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// `enforcer unload --pin-dir` on this directory; its output.
    pub fn unload(&self) -> std::io::Result<std::process::Output> {
        unload(&self.path)
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = unload(&self.path);
    }
}

fn unload(path: &std::path::Path) -> std::io::Result<std::process::Output> {
    let output = Command::new(binary())
        .arg("unload")
        .arg("--pin-dir")
        .arg(path)
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "enforcer unload --pin-dir {}: {output:?}",
            path.display()
        )));
    }
    Ok(output)
}

/// Unloads the tests' pin directories whose process `stale` says of.
fn unload_pin_dirs(stale: impl Fn(u32) -> bool) {
    let Ok(entries) = std::fs::read_dir(PIN_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PIN_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse().ok())
        else {
            continue;
        };
        if stale(pid) {
            let _ = unload(&entry.path());
        }
    }
}

extern "C" fn unload_own_pin_dirs() {
    let own = std::process::id();
    unload_pin_dirs(|pid| pid == own);
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// The pin directory the harness gave it, unless the test named one.
    pins: Option<PinDir>,
    control_socket: PathBuf,
    /// The stdout lines read so far, live.
    stdout: Arc<Mutex<Vec<String>>>,
    stdout_reader: Option<thread::JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

/// A command for [`spawn`]'s thread, and where the child goes.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `command` from a thread that lasts as long as the test process,
/// with the kernel set to kill the child when that thread ends: an agent
/// the test process leaves behind (a shared one, or one of a test that
/// panicked or was killed) dies with it (and its [`PinDir`] is unloaded).
/// (`PR_SET_PDEATHSIG` fires when the spawning *thread* exits, so it cannot
/// be a test's own thread.)
fn spawn(mut command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::spawn(move || {
            for (mut command, reply) in incoming {
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(requests)
    });
    // SAFETY: prctl(2) only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let (reply, child) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    child
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

/// Lines that are JSON records, parsed; any other line is an error.
fn parse_records(lines: &[String]) -> anyhow::Result<Vec<Value>> {
    lines
        .iter()
        .map(|line| {
            serde_json::from_str(line)
                .with_context(|| format!("agent stdout line is not JSON: {line:?}"))
        })
        .collect()
}

/// What a stopped agent left behind.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// Its pin directory, unloaded when this is dropped: until then the
    /// kernel enforces what the agent left pinned.
    pub pins: Option<PinDir>,
    /// The decisions (`event.kind` `alert`) among the stdout lines; stdout
    /// must carry nothing but JSON lines.
    pub events: Vec<Value>,
    /// The policy changes (`event.dataset` `enforcer.policy`).
    pub policy_events: Vec<Value>,
    /// The accounting records (`event.dataset` `enforcer.accounting`): what
    /// was lost or left out.
    pub accounting: Vec<Value>,
    pub stderr: String,
}

/// Why an agent did not become ready.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    /// Set when the harness stopped waiting and killed the agent.
    pub gave_up_after: Option<Duration>,
    pub stderr: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.gave_up_after {
            Some(waited) => write!(
                f,
                "agent was not ready within {waited:?} and was killed; stderr:\n{}",
                self.stderr
            ),
            None => write!(
                f,
                "agent did not start (exit {:?}); stderr:\n{}",
                self.status, self.stderr
            ),
        }
    }
}

impl Agent {
    /// Runs `enforcer run ARGS` and waits until it reports ready, after
    /// stopping the shared agent ([`crate::scenario::shared`]). Each agent
    /// gets a control socket of its own unless ARGS name one.
    pub fn start(args: &[&str]) -> Result<Self, StartFailure> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // One agent at a time: a shared one would decide this one's
        // containers too.
        crate::scenario::release_shared();
        let control_socket = std::env::temp_dir().join(format!(
            "enforcer-test-{}-{}.sock",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut command = Command::new(binary());
        command.arg("run").args(args);
        if !args.contains(&"--control-socket") {
            command.arg("--control-socket").arg(&control_socket);
        }
        let pins = (!args.contains(&"--pin-dir")).then(PinDir::new);
        if let Some(pins) = &pins {
            command.arg("--pin-dir").arg(pins.path());
        }
        command
            .env("ENFORCER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn(command).map_err(|error| StartFailure {
            status: None,
            gave_up_after: None,
            stderr: format!("spawning {}: {error}", binary().display()),
        })?;
        let stdout_pipe = child.stdout.take().expect("piped stdout");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stdout_sink = Arc::clone(&stdout);
        // A read error ends the capture; the assertions on events show it.
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(stdout_pipe).lines().map_while(Result::ok) {
                stdout_sink.lock().expect("stdout lock").push(line);
            }
        });
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_sink = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut text = stderr_sink.lock().expect("stderr lock");
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut agent = Self {
            child,
            pins,
            control_socket,
            stdout,
            stdout_reader: Some(stdout_reader),
            stderr,
            stderr_reader: Some(stderr_reader),
        };
        let (started, limit) = (Instant::now(), patience(READY_TIMEOUT));
        loop {
            if agent.stderr_text().contains(READY) {
                return Ok(agent);
            }
            let exited = agent.child.try_wait().ok().flatten();
            let gave_up = started.elapsed() > limit;
            if exited.is_some() || gave_up {
                if exited.is_none() {
                    let _ = agent.child.kill();
                }
                let status = agent.child.wait().ok();
                agent.join_stderr();
                return Err(StartFailure {
                    status,
                    gave_up_after: (exited.is_none() && gave_up).then_some(started.elapsed()),
                    stderr: agent.stderr_text(),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn join_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            // The reader ends at EOF, which the exited child guarantees.
            let _ = reader.join();
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// The control socket the harness gave the agent.
    pub fn control_socket(&self) -> &std::path::Path {
        &self.control_socket
    }

    /// The PID of the agent process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the agent's log has `count` lines containing `text`;
    /// false after `timeout` (a hang's deadline: longer in the emulated VMs,
    /// see [`patience`]).
    pub fn wait_for_log(&self, text: &str, count: usize, timeout: Duration) -> bool {
        let (started, limit) = (Instant::now(), patience(timeout));
        while started.elapsed() < limit {
            if self.stderr_text().matches(text).count() >= count {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        self.stderr_text()
    }

    /// A memory field of the agent's `/proc/PID/status` in KiB (`VmRSS`
    /// resident now, `VmHWM` the peak).
    pub fn memory_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid()))
    }

    /// The CPU time the agent has used so far, all threads, user and
    /// system, in seconds (clock-tick resolution).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name, which is in parentheses and may
        // hold spaces: utime and stime are the 14th and 15th of the line.
        let rest = stat.rsplit_once(')').context("no ) in /proc/PID/stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |index: usize| -> anyhow::Result<f64> {
            let value: u64 = fields.get(index).context("short /proc/PID/stat")?.parse()?;
            #[expect(clippy::cast_precision_loss, reason = "clock ticks of one run")]
            Ok(value as f64)
        };
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        anyhow::ensure!(per_second > 0, "sysconf(_SC_CLK_TCK) failed");
        #[expect(clippy::cast_precision_loss, reason = "a small constant")]
        Ok((ticks(11)? + ticks(12)?) / per_second as f64)
    }

    /// Waits until the agent has written every record of what the kernel
    /// decided so far (`enforcer flush`) and the harness has read them;
    /// returns how many stdout lines that is, a mark for
    /// [`Self::events_since`].
    pub fn flush(&self) -> anyhow::Result<usize> {
        let written = self.flush_sinks()?;
        let (started, limit) = (Instant::now(), patience(FLUSH_TIMEOUT));
        while self.stdout.lock().expect("stdout lock").len() < written {
            if started.elapsed() > limit {
                bail!("the agent wrote {written} records; fewer reached the harness");
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(written)
    }

    /// Waits until the agent has written every record of what the kernel
    /// decided so far to its sinks (`enforcer flush`); returns how many
    /// records it has written since it started. For agents whose sinks are
    /// not stdout.
    pub fn flush_sinks(&self) -> anyhow::Result<usize> {
        let output = Command::new(binary())
            .arg("flush")
            .arg("--socket")
            .arg(&self.control_socket)
            .output()
            .context("running enforcer flush")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "enforcer flush: {}{stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // "N audit records written"
        let written: usize = stdout
            .split_whitespace()
            .next()
            .and_then(|count| count.parse().ok())
            .with_context(|| format!("enforcer flush printed {stdout:?}"))?;
        Ok(written)
    }

    /// The decisions (`event.kind` `alert`) among the stdout lines after
    /// `mark` (from [`Self::flush`]).
    pub fn events_since(&self, mark: usize) -> anyhow::Result<Vec<Value>> {
        let lines = self.stdout.lock().expect("stdout lock");
        let records = parse_records(lines.get(mark..).unwrap_or_default())?;
        Ok(records
            .into_iter()
            .filter(|record| record["event"]["kind"] == "alert")
            .collect())
    }

    /// The records of `dataset` (`event.dataset`) among the stdout lines
    /// after `mark` (from [`Self::flush`]).
    pub fn records_since(&self, mark: usize, dataset: &str) -> anyhow::Result<Vec<Value>> {
        let lines = self.stdout.lock().expect("stdout lock");
        let records = parse_records(lines.get(mark..).unwrap_or_default())?;
        Ok(records
            .into_iter()
            .filter(|record| record["event"]["dataset"] == dataset)
            .collect())
    }

    /// Sends SIGTERM and collects what the agent wrote.
    pub fn stop(self) -> anyhow::Result<Stopped> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` and collects what the agent wrote.
    pub fn stop_with(self, signal: libc::c_int) -> anyhow::Result<Stopped> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: plain kill(2) on our own child, which has not been reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({signal}): {}", std::io::Error::last_os_error());
        }
        self.wait_for_exit()
    }

    /// Waits for the agent to exit (something else stops it) and collects
    /// what it wrote.
    pub fn wait_for_exit(mut self) -> anyhow::Result<Stopped> {
        let (started, limit) = (Instant::now(), patience(STOP_TIMEOUT));
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                bail!(
                    "agent did not exit within {limit:?}; log:\n{}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        self.stdout_reader
            .take()
            .expect("stdout reader present until stop")
            .join()
            .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
        self.join_stderr();
        let stderr = self.stderr_text();
        let records = parse_records(&self.stdout.lock().expect("stdout lock"))?;
        let (mut policy_events, mut accounting, mut events) = (Vec::new(), Vec::new(), Vec::new());
        for record in records {
            match record["event"]["dataset"].as_str() {
                Some("enforcer.policy") => policy_events.push(record),
                Some("enforcer.accounting") => accounting.push(record),
                _ => events.push(record),
            }
        }
        Ok(Stopped {
            status,
            pins: self.pins.take(),
            events,
            policy_events,
            accounting,
            stderr,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A panicking test must not leave programs attached (the pin
        // directory, dropped after this, unloads what it pinned).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
