//! What the drift tests share: starting agents, reading their events.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use serde_json::Value;

use crate::{
    agent::{Agent, Stopped},
    container::{self, Image, Run, Volume},
    require::{self, Requirement},
    serial,
};

/// The agent kept running between the tests of a test binary that ask for
/// it with the same arguments ([`shared`]). Starting one costs seconds under
/// emulation; one test after another with the same agent costs nothing.
/// Only one agent runs at a time: asking for other arguments, or starting
/// an agent of one's own ([`Agent::start`]), stops it.
static SHARED: Mutex<Option<(Vec<String>, Arc<Agent>)>> = Mutex::new(None);

/// Why this kernel refuses BPF LSM programs, once an agent said so.
static LSM_UNAVAILABLE: OnceLock<String> = OnceLock::new();

/// Stops the shared agent, if any (what it pinned is unloaded once it is
/// gone). Called before any other agent starts.
pub fn release_shared() {
    let released = SHARED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some((_, agent)) = released
        && let Ok(agent) = Arc::try_unwrap(agent)
    {
        let _ = agent.stop();
    }
}

/// The shared agent running `enforcer run ARGS` (started if need be); a
/// failure to start fails the test. `None` when ARGS ask for the lsm backend
/// and this kernel refuses BPF LSM programs (said, or failed, as
/// [`start_lsm`] does).
pub fn shared(args: &[&str]) -> Option<Arc<Agent>> {
    let key: Vec<String> = args.iter().map(|&arg| arg.to_owned()).collect();
    if let Some((running, agent)) = &*SHARED.lock().unwrap_or_else(PoisonError::into_inner)
        && *running == key
    {
        return Some(Arc::clone(agent));
    }
    let lsm = args.windows(2).any(|pair| pair == ["--backend", "lsm"]);
    if lsm && let Some(reason) = LSM_UNAVAILABLE.get() {
        require::unavailable(Requirement::Lsm, reason);
        return None;
    }
    release_shared();
    let agent = Arc::new(match Agent::start(args) {
        Ok(agent) => agent,
        Err(failure) if lsm && failure.stderr.contains(LSM_REFUSED) => {
            let reason = lsm_refusal(&failure.stderr);
            require::unavailable(Requirement::Lsm, &reason);
            let _ = LSM_UNAVAILABLE.set(reason);
            return None;
        }
        Err(failure) => panic!("{failure}"),
    });
    *SHARED.lock().unwrap_or_else(PoisonError::into_inner) = Some((key, Arc::clone(&agent)));
    Some(agent)
}

/// [`shared`] with `--backend lsm` and `args`.
pub fn shared_lsm(args: &[&str]) -> Option<Arc<Agent>> {
    let mut all = vec!["--backend", "lsm"];
    all.extend(args);
    shared(&all)
}

/// [`shared`] with `--backend signal` and `args`, which every kernel here
/// supports.
pub fn shared_signal(args: &[&str]) -> Arc<Agent> {
    let mut all = vec!["--backend", "signal"];
    all.extend(args);
    shared(&all).expect("the signal backend has no requirement")
}

/// What a running agent reported while a scenario ran.
#[derive(Debug)]
pub struct Observed {
    /// The decisions of the scenario's container (of anything, for a
    /// scenario without a container group to tell them by).
    pub events: Vec<Value>,
    /// The agent's log so far.
    pub log: String,
}

/// Runs `scenario` while `agent` runs, and returns what it returned and the
/// records the agent wrote meanwhile (every one, by the flush barriers
/// before and after), those of cgroup `cgroup_id(&output)` alone when that
/// is known.
pub fn observe<T>(
    agent: &Agent,
    scenario: impl FnOnce() -> T,
    cgroup_id: impl FnOnce(&T) -> Option<u64>,
) -> (T, Observed) {
    let mark = agent
        .flush()
        .expect("flushing the agent before the scenario");
    let output = scenario();
    agent
        .flush()
        .expect("flushing the agent after the scenario");
    let group = cgroup_id(&output);
    let events = agent
        .events_since(mark)
        .expect("reading the agent's records")
        .into_iter()
        .filter(|event| group.is_none_or(|id| event["enforcer"]["cgroup_id"] == id))
        .collect();
    let log = agent.log();
    (output, Observed { events, log })
}

/// Runs `script` in a container of `image` with `volumes` while the running
/// `agent` watches; returns the run and the decisions on its container.
pub fn run_observed(
    agent: &Agent,
    image: &Image,
    volumes: &[Volume],
    script: &str,
) -> (Run, Observed) {
    observe(
        agent,
        || container::run_with(image, volumes, script).expect("running the container"),
        |run| run.cgroup_id,
    )
}

/// Runs `script` in a container of `image` with `volumes` while `agent`
/// runs, then stops the agent.
pub fn run_under(agent: Agent, image: &Image, volumes: &[Volume], script: &str) -> (Run, Stopped) {
    let run = container::run_with(image, volumes, script).expect("running the container");
    let stopped = agent.stop().expect("stopping the agent");
    (run, stopped)
}

/// Starts `enforcer run ARGS`; a failure to start fails the test.
pub fn start(args: &[&str]) -> Agent {
    Agent::start(args).unwrap_or_else(|failure| panic!("{failure}"))
}

/// Starts the agent with `--backend lsm` and `args`. `None` (after saying
/// why) when this kernel refuses BPF LSM programs and the run does not
/// require them.
pub fn start_lsm(args: &[&str]) -> Option<Agent> {
    let mut all = vec!["--backend", "lsm"];
    all.extend(args);
    match Agent::start(&all) {
        Ok(agent) => Some(agent),
        Err(failure) if failure.stderr.contains(LSM_REFUSED) => {
            require::unavailable(Requirement::Lsm, &lsm_refusal(&failure.stderr));
            None
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// What the agent says when the kernel refuses BPF LSM programs.
const LSM_REFUSED: &str = "BPF LSM is not usable";

/// The line of `log` that says why BPF LSM is refused.
fn lsm_refusal(log: &str) -> String {
    log.lines()
        .find(|line| line.contains(LSM_REFUSED))
        .unwrap_or_default()
        .to_owned()
}

/// The drift events among the agent's output.
pub fn drift_events(stopped: &Stopped) -> Vec<&Value> {
    stopped
        .events
        .iter()
        .filter(|event| event["rule"]["name"] == "drift-prevention")
        .collect()
}

/// The events of the file at `path` (as exec named it) among the agent's
/// output.
pub fn events_of_file<'a>(stopped: &'a Stopped, path: &str) -> Vec<&'a Value> {
    stopped
        .events
        .iter()
        .filter(|event| event["file"]["path"] == path)
        .collect()
}

/// Checks the agent exited 0 and returns its drift events.
pub fn clean_exit_events(stopped: &Stopped) -> Vec<&Value> {
    assert!(
        stopped.status.success(),
        "agent exit {:?} after the stop signal; log:\n{}",
        stopped.status,
        stopped.stderr
    );
    drift_events(stopped)
}

/// Checks the agent exited 0 and reported exactly one drift event: image
/// files (and everything the test harness runs) produced none.
pub fn single_drift_event(stopped: &Stopped) -> &Value {
    let events = clean_exit_events(stopped);
    assert_eq!(
        events.len(),
        1,
        "expected one drift event, got {events:#?}\nagent log:\n{}",
        stopped.stderr
    );
    events[0]
}

/// A test's hold on the kernel and its agent.
pub type Hold = (MutexGuard<'static, ()>, Arc<Agent>);

/// The shared lsm agent, for a test run as root on a kernel with BPF LSM.
pub fn lsm() -> Option<Hold> {
    let serial = serial();
    if !require::root() {
        return None;
    }
    Some((serial, shared_lsm(&[])?))
}

/// The shared signal agent with `args`, for a test run as root.
pub fn signal(args: &[&str]) -> Option<Hold> {
    let serial = serial();
    if !require::root() {
        return None;
    }
    Some((serial, shared_signal(args)))
}

/// The drift events.
pub fn drift(observed: &Observed) -> Vec<&Value> {
    observed
        .events
        .iter()
        .filter(|event| event["rule"]["name"] == "drift-prevention")
        .collect()
}

/// Whether the agent can look through a filesystem's mounts (`bpf_loop`,
/// 5.17+). Where it cannot, a container file run from a read-only mount the
/// runtime made is allowed and reported, as `unchecked-mount`.
pub fn walks_mounts(observed: &Observed) -> bool {
    !observed.log.contains("the kernel has no bpf_loop")
}

/// `events` without the `unchecked-mount` records, after checking that
/// these are exactly the runs of `names` (allowed, in order) where the agent
/// cannot look through mounts, and that there are none elsewhere.
pub fn checked_mounts<'a>(
    observed: &Observed,
    events: Vec<&'a Value>,
    names: &[&str],
) -> Vec<&'a Value> {
    let (unchecked, rest): (Vec<&Value>, Vec<&Value>) = events
        .into_iter()
        .partition(|event| event["enforcer"]["layer"] == "unchecked-mount");
    let expected: &[&str] = if walks_mounts(observed) { &[] } else { names };
    let found: Vec<&str> = unchecked
        .iter()
        .map(|event| event["file"]["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(found, expected, "{unchecked:#?}");
    for event in &unchecked {
        assert_eq!(event["enforcer"]["decision"], "audit", "{event:#}");
    }
    rest
}

/// The drift events, each checked for what every drift event must say.
pub fn events<'a>(observed: &'a Observed, backend: &str) -> Vec<&'a Value> {
    let events = drift(observed);
    for event in &events {
        assert_eq!(event["enforcer"]["backend"], backend, "{event:#}");
        assert_eq!(event["enforcer"]["reason"], "drift", "{event:#}");
        assert_eq!(event["event"]["kind"], "alert", "{event:#}");
        assert!(
            event["process"]["pid"].as_u64().is_some_and(|pid| pid > 1),
            "{event:#}"
        );
    }
    events
}

/// Checks that `event` reports `name` reached `via` from `layer`, decided as
/// `decision`.
pub fn assert_event(event: &Value, via: &str, layer: &str, name: &str, decision: &str) {
    assert_eq!(event["enforcer"]["via"], via, "{event:#}");
    assert_eq!(event["enforcer"]["layer"], layer, "{event:#}");
    assert_eq!(event["file"]["name"], name, "{event:#}");
    assert_eq!(event["enforcer"]["decision"], decision, "{event:#}");
}

/// A container that runs a dropped binary in a loop until told to stop:
/// every try that ran is drift that no agent decided. For what happens
/// while agents come and go.
#[derive(Debug)]
pub struct DriftLoop {
    shared: container::Scratch,
    thread: std::thread::JoinHandle<anyhow::Result<Run>>,
}

/// What a [`DriftLoop`] saw.
#[derive(Debug)]
pub struct LoopOutcome {
    pub tries: u64,
    /// Tries that ran.
    pub ran: usize,
    pub run: Run,
}

impl DriftLoop {
    /// Starts the container; its first tries come within a second or so.
    pub fn start() -> anyhow::Result<Self> {
        let shared = container::Scratch::new("drift-loop")?;
        let volume = Volume {
            host: shared.path().to_owned(),
            at: "/shared".to_owned(),
            read_only: true,
        };
        let thread = std::thread::spawn(move || {
            let image = Image::busybox()?;
            container::run_with(
                &image,
                &[volume],
                "cp /bin/busybox /tmp/busybox-dropped; n=0; \
                 while [ ! -e /shared/stop ]; do /tmp/busybox-dropped echo dropped-ran; n=$((n+1)); done; \
                 echo tries=$n",
            )
        });
        Ok(Self { shared, thread })
    }

    /// Tells the loop to stop and counts its tries.
    pub fn finish(self) -> anyhow::Result<LoopOutcome> {
        std::fs::write(self.shared.path().join("stop"), "")?;
        let run = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the loop's thread panicked"))??;
        let tries = run
            .value("tries")
            .and_then(|tries| tries.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("the loop did not finish: {run:#?}"))?;
        let ran = run
            .stdout
            .lines()
            .filter(|line| *line == "dropped-ran")
            .count();
        Ok(LoopOutcome { tries, ran, run })
    }
}
