//! What the drift tests share: starting agents, reading their events.

use serde_json::Value;

use crate::{
    agent::{Agent, Stopped},
    container::{self, Image, Run, Volume},
    require::{self, Requirement},
};

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
        Err(failure) if failure.stderr.contains("BPF LSM is not usable") => {
            let reason = failure
                .stderr
                .lines()
                .find(|line| line.contains("BPF LSM is not usable"))
                .unwrap_or_default()
                .to_owned();
            require::unavailable(Requirement::Lsm, &reason);
            None
        }
        Err(failure) => panic!("{failure}"),
    }
}

/// The drift events among the agent's output.
pub fn drift_events(stopped: &Stopped) -> Vec<&Value> {
    stopped
        .events
        .iter()
        .filter(|event| event["rule"]["name"] == "drift-prevention")
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
