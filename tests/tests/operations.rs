//! The operations surface of a running agent. Its HTTP endpoint
//! (`--metrics-address`): `/healthz` and `/readyz` answer while it
//! enforces, and `/metrics` counts a drift the kernel decided by decision,
//! reason and route, beside the kernel's and the pipeline's counters, the
//! exec program's runs and the policy's generation, as the audit event says
//! it happened. `enforcer status` shows the same backend, the programs the
//! kernel has attached, the policy in force and the counters.
//!
//! Runs on the host kernel (signal backend) and in the VMs (lsm backend).

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use enforcer_tests::{
    agent::{self, Agent},
    container::{self, Image},
    require, scenario, serial,
};

/// `GET path` over HTTP/1.1: the status code and the body.
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connecting to the metrics endpoint");
    stream
        .set_read_timeout(Some(require::patience(Duration::from_secs(30))))
        .expect("a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("reading the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` (exactly as written), if any.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

#[test]
fn probes_answer_and_metrics_count_what_the_kernel_decided() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let agent = Agent::start(&["--metrics-address", "127.0.0.1:0"])
        .unwrap_or_else(|failure| panic!("{failure}"));
    let log = agent.log();
    let address = log
        .lines()
        .find(|line| line.contains("serving /metrics"))
        .and_then(|line| line.split("address=").nth(1))
        .and_then(|address| address.split_whitespace().next())
        .unwrap_or_else(|| panic!("the agent did not say where it serves metrics:\n{log}"))
        .to_owned();
    assert_eq!(get(&address, "/healthz").0, 200);
    assert_eq!(get(&address, "/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(get(&address, "/nowhere").0, 404);

    let image = Image::busybox().expect("building the image");
    let run = container::run(&image, "cp /bin/busybox /tmp/dropped && /tmp/dropped true")
        .expect("running the container");
    agent.flush().expect("flushing");
    let (status, metrics) = get(&address, "/metrics");
    let shown = enforcer_status(&agent);
    let stopped = agent.stop().expect("stopping the agent");
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    let drift = scenario::events_of_file(&stopped, "/tmp/dropped");
    assert_eq!(drift.len(), 1, "{drift:#?}\n{run:?}\n{}", stopped.stderr);
    let decision = drift[0]["enforcer"]["decision"]
        .as_str()
        .expect("a decision");
    let series =
        format!(r#"enforcer_decisions_total{{decision="{decision}",reason="drift",via="exec"}}"#);
    assert_eq!(sample(&metrics, &series), Some(1.0), "{series}\n{metrics}");
    for (series, at_least) in [
        ("enforcer_kernel_drift_detected_total", 1.0),
        ("enforcer_kernel_exec_checked_total", 1.0),
        ("enforcer_kernel_events_lost_total", 0.0),
        ("enforcer_pipeline_dropped_total", 0.0),
        ("enforcer_pipeline_written_total", 2.0),
        (r#"enforcer_policy_changes_total{outcome="applied"}"#, 1.0),
        ("enforcer_policy_generation", 1.0),
        // The drift's key in the rate limit's table.
        (r#"enforcer_map_entries{map="REPORTED"}"#, 1.0),
        (r#"enforcer_map_capacity{map="REPORTED"}"#, 16384.0),
        (r#"enforcer_map_entries{map="VSHIELD_FILES"}"#, 0.0),
    ] {
        let value = sample(&metrics, series).unwrap_or_else(|| panic!("no {series}:\n{metrics}"));
        assert!(value >= at_least, "{series} = {value}\n{metrics}");
    }
    assert_eq!(
        sample(&metrics, "enforcer_pipeline_dropped_total"),
        Some(0.0)
    );
    // The program that decided ran, and its time was counted.
    let program = if decision == "killed" {
        "sched_process_exec"
    } else {
        "bprm_check_security"
    };
    let runs = metrics
        .lines()
        .filter(|line| line.starts_with("enforcer_program_runs_total{") && line.contains(program))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>();
    assert!(runs >= 1.0, "{program}: {runs}\n{metrics}");

    // enforcer status: the backend that decided, its exec program attached
    // and counted, the built-in policy, the counters as the metrics had them.
    assert_eq!(
        shown["backend"], drift[0]["enforcer"]["backend"],
        "{shown:#}"
    );
    let exec = shown["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .find(|listed| listed["name"] == program)
        .unwrap_or_else(|| panic!("no {program}: {shown:#}"));
    assert_eq!(exec["loaded"], true, "{shown:#}");
    assert_eq!(exec["attached"], true, "{shown:#}");
    assert!(exec["runs"].as_u64() >= Some(1), "{shown:#}");
    assert_eq!(shown["policy"]["name"], "builtin-default", "{shown:#}");
    assert_eq!(shown["policy"]["generation"], 1, "{shown:#}");
    assert!(
        shown["counters"]["kernel.drift_detected"].as_u64() >= Some(1),
        "{shown:#}"
    );
    assert_eq!(shown["counters"]["pipeline.dropped"], 0, "{shown:#}");
    assert!(
        shown["kernel"]["lsm"]
            .as_str()
            .is_some_and(|lsm| !lsm.is_empty()),
        "{shown:#}"
    );
}

/// `enforcer status --json`, asked of `agent`; also checks that the text
/// form names the backend.
fn enforcer_status(agent: &Agent) -> serde_json::Value {
    let ask = |json: bool| {
        let mut command = std::process::Command::new(agent::binary());
        command
            .arg("status")
            .arg("--socket")
            .arg(agent.control_socket());
        if json {
            command.arg("--json");
        }
        let output = command.output().expect("running enforcer status");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    let shown: serde_json::Value = serde_json::from_str(&ask(true)).expect("JSON");
    let text = ask(false);
    let backend = shown["backend"].as_str().expect("a backend");
    assert!(text.contains(&format!("backend:    {backend}")), "{text}");
    shown
}

/// The kernel's rate limit: the same container deciding the same file
/// again and again writes `BURST` records per window; the rest are counted,
/// the key's next record after the window says how many were left out, and
/// an accounting record reports them. Every decision was still carried out.
/// The agent reads its options from a config file; a flag wins over it.
#[test]
fn the_rate_limit_counts_and_reports_what_it_leaves_out() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    // From a config file, with the command line overriding one option.
    let dir = container::Scratch::new("config").expect("a scratch directory");
    let config = dir.path().join("enforcer.yaml");
    std::fs::write(
        &config,
        "rate-limit: 1/1h\naccounting-interval: 1s\nsink: [stdout]\n",
    )
    .expect("writing the config file");
    let config = config.display().to_string();
    // The seven runs of the burst must fall in one window, also in a busy
    // emulated VM.
    let window = require::patience(Duration::from_secs(2)).as_secs();
    let agent = Agent::start(&["--config", &config, "--rate-limit", &format!("3/{window}s")])
        .unwrap_or_else(|failure| panic!("{failure}"));
    let image = Image::busybox().expect("building the image");
    // Seven runs in a burst, then one after the window.
    let run = container::run(
        &image,
        &format!(
            "cp /bin/busybox /tmp/dropped; for i in 1 2 3 4 5 6 7; do /tmp/dropped true; done; \
             /bin/busybox sleep {}; /tmp/dropped true; /bin/busybox sleep 2",
            window + 1
        ),
    )
    .expect("running the container");
    agent.flush().expect("flushing");
    let shown = enforcer_status(&agent);
    let stopped = agent.stop().expect("stopping the agent");
    let drift = scenario::events_of_file(&stopped, "/tmp/dropped");
    assert_eq!(drift.len(), 4, "{drift:#?}\n{run:?}\n{}", stopped.stderr);
    let suppressed: Vec<_> = drift
        .iter()
        .map(|event| event["enforcer"]["suppressed"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(suppressed, [0, 0, 0, 4], "{drift:#?}");
    assert_eq!(
        shown["counters"]["kernel.events_suppressed"], 4,
        "{shown:#}"
    );
    assert_eq!(shown["counters"]["kernel.drift_detected"], 8, "{shown:#}");
    // The accounting tick may fall inside the burst and split what it
    // reports over two records: their `since` parts add up, and the last
    // record's running total holds all four.
    let accounting = &stopped.accounting;
    let last = accounting
        .last()
        .unwrap_or_else(|| panic!("no accounting record\n{}", stopped.stderr));
    let since = |field: &str| -> u64 {
        accounting
            .iter()
            .map(|record| {
                record["enforcer"]["accounting"]["since"][field]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    assert_eq!(since("suppressed"), 4, "{accounting:#?}");
    assert_eq!(since("lost"), 0, "{accounting:#?}");
    assert_eq!(
        last["enforcer"]["accounting"]["total"]["suppressed"], 4,
        "{accounting:#?}"
    );
    assert!(
        accounting
            .iter()
            .all(|record| record["event"]["outcome"] == "success"),
        "{accounting:#?}"
    );
}

/// The control socket answers by what the kernel says of the peer, not by
/// who can reach the socket file: a client in a mount namespace of its own
/// (as a container that reaches the socket through a hostPath of `/run`
/// is, whatever its uid) is refused, and the agent says so; the same
/// request from the host's mount namespace is answered. A hook message
/// whose claimed process is in no cgroup of the claimed container is
/// refused too, and both refusals are audit records.
#[test]
fn the_control_socket_refuses_a_client_in_another_mount_namespace() {
    use std::os::unix::process::CommandExt as _;

    let _serial = serial();
    if !require::root() {
        return;
    }
    let agent = scenario::shared(&[]).expect("an agent with the default backend");
    let mark = agent.flush().expect("flushing");
    let status = || {
        let mut command = std::process::Command::new(agent::binary());
        command
            .arg("status")
            .arg("--socket")
            .arg(agent.control_socket());
        command
    };
    let mut elsewhere = status();
    // SAFETY: only a system call between fork and exec.
    unsafe {
        elsewhere.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let refused = elsewhere.output().expect("running enforcer status");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        stderr.contains("refused") && stderr.contains("mount namespace"),
        "{stderr}"
    );
    let answered = status().output().expect("running enforcer status");
    assert!(answered.status.success(), "{answered:?}");
    // The agent's log is read by a thread of the harness: wait for it.
    assert!(
        agent.wait_for_log(
            "control socket: request refused",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        agent.log()
    );

    // A hook message from the host whose claims the kernel contradicts:
    // this test's own process is no container's first process.
    let forged = serde_json::json!({
        "ociVersion": "1.0.0",
        "id": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "status": "creating",
        "pid": std::process::id(),
        "annotations": {"io.kubernetes.pod.namespace": "ci-evil"},
    });
    let mut hook = std::process::Command::new(agent::binary())
        .args(["hook", "oci", "--fail-closed", "--socket"])
        .arg(agent.control_socket())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running enforcer hook oci");
    {
        let mut stdin = hook.stdin.take().expect("stdin");
        stdin
            .write_all(forged.to_string().as_bytes())
            .expect("writing the state");
    }
    let hook = hook.wait_with_output().expect("the hook");
    let hook_stderr = String::from_utf8_lossy(&hook.stderr);
    assert!(!hook.status.success(), "{hook:?}");
    assert!(hook_stderr.contains("not in a cgroup"), "{hook_stderr}");

    // Both refusals are audit records naming who asked and why.
    agent.flush().expect("flushing");
    let control = agent
        .records_since(mark, "enforcer.control")
        .expect("the agent's records");
    let refused = |request: &str| {
        control.iter().find(|record| {
            record["enforcer"]["control"]["request"] == request
                && record["event"]["action"] == "control-refused"
        })
    };
    let elsewhere = refused("status").unwrap_or_else(|| panic!("{control:#?}"));
    assert_eq!(elsewhere["event"]["outcome"], "failure", "{elsewhere:#}");
    assert_eq!(elsewhere["enforcer"]["control"]["access"], "read");
    assert!(
        elsewhere["enforcer"]["control"]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("mount namespace")),
        "{elsewhere:#}"
    );
    let claimed = refused("container-starting").unwrap_or_else(|| panic!("{control:#?}"));
    assert_eq!(claimed["enforcer"]["control"]["access"], "change");
    assert_eq!(claimed["container"]["id"], forged["id"], "{claimed:#}");
    assert_eq!(
        claimed["enforcer"]["control"]["peer"]["uid"], 0,
        "{claimed:#}"
    );
}
