//! A flood of 100,000 exec decisions in one container, with the rate limit
//! off so that every one is meant to become a record: the agent's memory
//! stays bounded (peak RSS at most 64 MiB), and the counters add up to the
//! last record — every decision is written, or counted as left out, lost in
//! the ring buffer or dropped by the pipeline, and the accounting record
//! says the same totals.
//!
//! Runs on the host kernel (signal backend: each exec is killed); the VMs
//! skip it (under emulation it would take many minutes, and the ring buffer
//! and pipeline are the same with the lsm backend).

use std::time::{Duration, Instant};

use enforcer_tests::{
    agent::Agent,
    container::{self, Image, Scratch},
    require, serial,
};

const FLOOD: u64 = 100_000;
/// Peak resident memory allowed during the flood.
const PEAK_LIMIT_KIB: u64 = 64 * 1024;

#[test]
fn a_flood_of_exec_decisions_is_accounted_for_with_bounded_memory() {
    let _serial = serial();
    if !require::root() || !require::not_emulated("a flood of 100,000 execs") {
        return;
    }
    let image = Image::with_dynamic(std::path::Path::new(env!("CARGO_BIN_EXE_probe")), "probe")
        .expect("building the image");
    let dir = Scratch::new("flood").expect("a scratch directory");
    let file = dir.path().join("audit.json");
    let sink = format!("file:{},max-size=4GiB", file.display());
    let agent = Agent::start(&[
        "--rate-limit",
        "off",
        "--accounting-interval",
        "1s",
        "--sink",
        &sink,
    ])
    .unwrap_or_else(|failure| panic!("{failure}"));
    let idle_kib = agent.memory_kib("VmRSS").expect("the agent's memory");
    let started = Instant::now();
    let run = container::run(
        &image,
        &format!("cp /bin/busybox /tmp/flooder && /bin/probe exec-flood {FLOOD} /tmp/flooder true"),
    )
    .expect("running the container");
    let flood_time = started.elapsed();
    assert!(run.status.success(), "{run:?}");
    // One more accounting period, so its record covers the whole flood.
    std::thread::sleep(Duration::from_millis(2500));
    agent.flush_sinks().expect("flushing");
    let peak_kib = agent.memory_kib("VmHWM").expect("the agent's memory");
    let status = std::process::Command::new(enforcer_tests::agent::binary())
        .args(["status", "--json", "--socket"])
        .arg(agent.control_socket())
        .output()
        .expect("enforcer status");
    let shown: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status is JSON");
    let stopped = agent.stop().expect("stopping the agent");
    let counter = |name: &str| {
        shown["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name}: {shown:#}"))
    };

    let text = std::fs::read_to_string(&file).expect("the audit file");
    let mut flood_records = 0;
    let mut accounting = Vec::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("a whole record");
        if record["file"]["path"] == "/tmp/flooder" {
            flood_records += 1;
        } else if record["event"]["dataset"] == "enforcer.accounting" {
            accounting.push(record);
        }
    }
    let (decided, suppressed, lost, dropped) = (
        counter("kernel.drift_detected"),
        counter("kernel.events_suppressed"),
        counter("kernel.events_lost"),
        counter("pipeline.dropped"),
    );
    eprintln!(
        "flood of {FLOOD} in {flood_time:?}: {flood_records} records, {suppressed} suppressed, \
         {lost} lost, {dropped} dropped; agent RSS idle {idle_kib} KiB, peak {peak_kib} KiB"
    );
    assert_eq!(
        decided, FLOOD,
        "every exec was decided: {shown:#}\n{}",
        stopped.stderr
    );
    assert_eq!(suppressed, 0, "the rate limit is off");
    assert_eq!(
        flood_records + suppressed + lost + dropped,
        decided,
        "records + left out + lost + dropped = decisions"
    );
    assert_eq!(counter("pipeline.decode_errors"), 0);
    if lost + dropped > 0 {
        let newest = accounting.last().unwrap_or_else(|| {
            panic!("{lost} lost and {dropped} dropped without an accounting record")
        });
        let total = &newest["enforcer"]["accounting"]["total"];
        assert_eq!(total["lost"], lost, "{newest:#}");
        assert_eq!(total["dropped"], dropped, "{newest:#}");
        assert_eq!(newest["event"]["outcome"], "failure", "{newest:#}");
    }
    assert!(
        peak_kib <= PEAK_LIMIT_KIB,
        "the agent's peak RSS was {peak_kib} KiB during the flood (limit {PEAK_LIMIT_KIB})"
    );
}
