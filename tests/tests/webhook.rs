//! The webhook sink end to end: the real agent writes every record to
//! stdout and to a webhook receiver (a separate process, `receiver`); the
//! receiver is killed while drift goes on, and started again on the same
//! port. The receiver ends up with exactly the agent's records: each once,
//! in order, in contiguous numbered batches.
//!
//! Userspace only: runs on the host kernel (signal backend); the emulated
//! VMs skip it.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::Agent,
    container::{self, Image, Scratch},
    require, serial,
};
use serde_json::Value;

const RECEIVER: &str = env!("CARGO_BIN_EXE_receiver");
/// Longest wait for records to reach the receiver (emulated VMs are slow).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `receiver` process.
struct Receiver {
    child: Child,
    address: String,
}

impl Receiver {
    fn start(address: &str, output: &Path) -> Self {
        let mut child = Command::new(RECEIVER)
            .arg(address)
            .arg(output)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the receiver's address");
        let address = line.trim().to_owned();
        assert!(!address.is_empty(), "the receiver did not start");
        Self { child, address }
    }

    fn kill(mut self) {
        self.child.kill().expect("killing the receiver");
        self.child.wait().expect("reaping the receiver");
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn received(output: &Path) -> Vec<Value> {
    fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("the receiver stores JSON lines"))
        .collect()
}

/// Waits until the receiver has `count` records.
fn wait_for_records(output: &Path, count: usize, agent: &Agent) {
    let started = Instant::now();
    while received(output).len() < count {
        assert!(
            started.elapsed() < DELIVERY_TIMEOUT,
            "the receiver has {} of {count} records after {DELIVERY_TIMEOUT:?}; agent log:\n{}",
            received(output).len(),
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a dropped copy of busybox three times: three drift decisions.
fn drift(image: &Image, name: &str) {
    container::run(
        image,
        &format!(
            "cp /bin/busybox /tmp/{name} && for i in 1 2 3; do /tmp/{name} true || true; done"
        ),
    )
    .expect("running the container");
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[test]
fn every_record_reaches_the_receiver_once_and_in_order_across_an_outage() {
    let _serial = serial();
    if !require::root() || !require::not_emulated("the webhook sink is userspace") {
        return;
    }
    let scratch = Scratch::new("webhook").expect("a scratch directory");
    let output = scratch.path().join("received.jsonl");
    let spool = scratch.path().join("spool");
    let receiver = Receiver::start("127.0.0.1:0", &output);
    let address = receiver.address.clone();
    let webhook = format!(
        "webhook:http://{address}/ingest,spool-dir={},batch-wait=200ms",
        spool.display()
    );
    let agent = Agent::start(&["--sink", "stdout", "--sink", &webhook])
        .unwrap_or_else(|failure| panic!("{failure}"));
    let image = Image::busybox().expect("building the image");

    drift(&image, "d");
    let written = agent.flush().expect("flushing");
    wait_for_records(&output, written, &agent);

    // The receiver goes away; the records wait in the spool.
    receiver.kill();
    drift(&image, "e");
    let written = agent.flush().expect("flushing");
    assert!(
        agent.wait_for_log("webhook delivery failing", 1, DELIVERY_TIMEOUT),
        "no retry warning:\n{}",
        agent.log()
    );
    assert!(received(&output).len() < written);

    // Back on the same port: everything arrives.
    let receiver = Receiver::start(&address, &output);
    wait_for_records(&output, written, &agent);
    assert!(
        agent.wait_for_log("webhook delivery resumed", 1, DELIVERY_TIMEOUT),
        "{}",
        agent.log()
    );
    // The webhook's own counters, as `enforcer status` shows them.
    let status = Command::new(enforcer_tests::agent::binary())
        .args(["status", "--json", "--socket"])
        .arg(agent.control_socket())
        .output()
        .expect("enforcer status");
    let shown: Value = serde_json::from_slice(&status.stdout).expect("status is JSON");
    let counters = &shown["counters"];
    assert_eq!(counters["webhook.sent"], written, "{shown:#}");
    assert_eq!(counters["webhook.spooled"], written, "{shown:#}");
    assert!(counters["webhook.retries"].as_u64() >= Some(1), "{shown:#}");
    assert_eq!(counters["webhook.rejected"], 0, "{shown:#}");
    let stopped = agent.stop().expect("stopping the agent");
    drop(receiver);

    let records = received(&output);
    let (policy, events): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|record| record["event"]["dataset"] == "enforcer.policy");
    assert_eq!(events, stopped.events, "{}", stopped.stderr);
    assert_eq!(policy, stopped.policy_events);
    for name in ["/tmp/d", "/tmp/e"] {
        let drifts = events
            .iter()
            .filter(|event| event["file"]["path"] == name)
            .count();
        assert_eq!(drifts, 3, "{name}: {events:#?}");
    }
    // Numbered batches, back to back: nothing was sent twice.
    let mut next = 0;
    for line in fs::read_to_string(with_suffix(&output, ".batches"))
        .expect("the receiver's batches")
        .lines()
    {
        let (sequence, count) = line.split_once(' ').expect("SEQUENCE COUNT");
        assert_eq!(sequence.parse::<u64>().ok(), Some(next), "{line}");
        next += count.parse::<u64>().expect("a count");
    }
    assert_eq!(next, (events.len() + policy.len()) as u64);
    eprintln!(
        "{} records in {} batches; agent log:\n{}",
        next,
        fs::read_to_string(with_suffix(&output, ".batches"))
            .unwrap_or_default()
            .lines()
            .count(),
        stopped.stderr
    );
}
