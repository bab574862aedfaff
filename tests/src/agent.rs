//! Drives the real `enforcer` binary.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

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
/// Start-up includes parsing kernel BTF, which takes seconds under QEMU's
/// software emulation.
const READY_TIMEOUT: Duration = Duration::from_mins(1);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    control_socket: PathBuf,
    stdout: Option<thread::JoinHandle<String>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

/// What a stopped agent left behind.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// The decisions (`event.kind` `alert`) among the stdout lines; stdout
    /// must carry nothing but JSON lines.
    pub events: Vec<Value>,
    /// The policy changes (`event.dataset` `enforcer.policy`).
    pub policy_events: Vec<Value>,
    pub stderr: String,
}

/// Why an agent did not become ready.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub stderr: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "agent did not start (exit {:?}); stderr:\n{}",
            self.status, self.stderr
        )
    }
}

impl Agent {
    /// Runs `enforcer run ARGS` and waits until it reports ready. Each agent
    /// gets a control socket of its own unless ARGS name one.
    pub fn start(args: &[&str]) -> Result<Self, StartFailure> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
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
        let mut child = command
            .env("ENFORCER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| StartFailure {
                status: None,
                stderr: format!("spawning {}: {error}", binary().display()),
            })?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        let stdout = thread::spawn(move || {
            let mut out = String::new();
            // A read error ends the capture; the assertions on events will show it.
            let _ = stdout.read_to_string(&mut out);
            out
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
            control_socket,
            stdout: Some(stdout),
            stderr,
            stderr_reader: Some(stderr_reader),
        };
        let started = Instant::now();
        loop {
            if agent.stderr_text().contains(READY) {
                return Ok(agent);
            }
            let exited = agent.child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > READY_TIMEOUT {
                if exited.is_none() {
                    let _ = agent.child.kill();
                }
                let status = agent.child.wait().ok();
                agent.join_stderr();
                let stderr = agent.stderr_text();
                return Err(StartFailure { status, stderr });
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
    /// false after `timeout`.
    pub fn wait_for_log(&self, text: &str, count: usize, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
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

    /// Sends SIGTERM and collects what the agent wrote.
    pub fn stop(self) -> anyhow::Result<Stopped> {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal` (SIGTERM or SIGINT) and collects what the agent wrote.
    pub fn stop_with(mut self, signal: libc::c_int) -> anyhow::Result<Stopped> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid")?;
        // SAFETY: plain kill(2) on our own child, which has not been reaped.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!("kill({signal}): {}", std::io::Error::last_os_error());
        }
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = self.child.kill();
                bail!(
                    "agent did not exit within {STOP_TIMEOUT:?} of signal {signal}; log:\n{}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        let stdout = self
            .stdout
            .take()
            .expect("stdout reader present until stop")
            .join()
            .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
        self.join_stderr();
        let stderr = self.stderr_text();
        let records: Vec<Value> = stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .with_context(|| format!("agent stdout line is not JSON: {line:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        let (policy_events, events) = records
            .into_iter()
            .partition(|record| record["event"]["dataset"] == "enforcer.policy");
        Ok(Stopped {
            status,
            events,
            policy_events,
            stderr,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // A panicking test must not leave programs attached.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
