//! Policy files as users give them: `enforcer policy check`, `enforcer
//! policy schema` (no kernel involved: they run anywhere, also without
//! root), and `enforcer run --policy` (root; the signal backend on the host,
//! also lsm in the VMs).

use std::{fs, path::PathBuf, process::Command};

use enforcer_tests::{
    agent::{self, Agent},
    container::Image,
    require,
    scenario::{clean_exit_events, run_under, start, start_lsm},
    serial,
};

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("enforcer-policy-cli-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

const VALID: &str = "apiVersion: enforcer.dev/v1alpha1
kind: DriftPolicy
metadata:
  name: default
spec:
  mode: audit
  allowedPaths: [/opt/app/plugins/*.so]
---
apiVersion: enforcer.dev/v1alpha1
kind: VShield
metadata:
  name: log4shell
spec:
  vulnerability: CVE-2021-44228
  files: [/app/lib/log4j-core-2.14.1.jar]
";

#[test]
fn check_accepts_a_valid_directory() {
    let dir = scratch("valid");
    fs::write(dir.join("policies.yaml"), VALID).expect("writing the policy");
    let output = Command::new(agent::binary())
        .args(["policy", "check"])
        .arg(&dir)
        .output()
        .expect("running enforcer");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "1 DriftPolicy and 1 VShield documents: valid\n"
    );
}

#[test]
fn check_prints_every_problem_with_its_place_and_exits_1() {
    let dir = scratch("invalid");
    let file = dir.join("bad.yaml");
    fs::write(
        &file,
        VALID
            .replace("mode: audit", "mode: enforse")
            .replace("CVE-2021-44228", "log4shell"),
    )
    .expect("writing the policy");
    let output = Command::new(agent::binary())
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .expect("running enforcer");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let file = file.display();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "{file}:6:9: spec.mode: unknown variant `enforse`, expected one of enforce, audit\n\
             {file}:14:18: spec.vulnerability: \"log4shell\" is not a vulnerability id: expected \
             CVE-YYYY-NNNN or GHSA-xxxx-xxxx-xxxx\n"
        )
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("2 problems in the policy files"),
        "{output:?}"
    );
}

#[test]
fn schema_describes_both_kinds() {
    let output = Command::new(agent::binary())
        .args(["policy", "schema"])
        .output()
        .expect("running enforcer");
    assert!(output.status.success(), "{output:?}");
    let schema: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the schema is JSON");
    let kinds: Vec<&str> = schema["oneOf"]
        .as_array()
        .expect("oneOf lists the kinds")
        .iter()
        .filter_map(|kind| kind["properties"]["kind"]["const"].as_str())
        .collect();
    assert_eq!(kinds, ["DriftPolicy", "VShield"]);
    assert_eq!(
        schema["$defs"]["DriftPolicySpec"]["additionalProperties"],
        false
    );
}

#[test]
fn run_enforces_the_drift_policy_of_a_file() {
    let _serial = serial();
    if !require::root() {
        return;
    }
    let dir = scratch("run");
    let policy = dir.join("drift.yaml");
    fs::write(
        &policy,
        "apiVersion: enforcer.dev/v1alpha1
kind: DriftPolicy
metadata:
  name: plugins-allowed
spec:
  allowedPaths: [\"/opt/plugins/*\"]
",
    )
    .expect("writing the policy");
    let policy = policy.display().to_string();
    let script = "/bin/busybox mkdir -p /opt/plugins
        cp /bin/busybox /opt/plugins/busybox-plugin
        /opt/plugins/busybox-plugin echo plugin-ran
        cp /bin/busybox /tmp/busybox-elsewhere
        /tmp/busybox-elsewhere echo elsewhere-ran";
    let image = Image::busybox().expect("building the image");
    let check = |stopped: &agent::Stopped, run_stdout: &str, backend: &str| {
        assert!(run_stdout.contains("plugin-ran"), "{run_stdout}");
        assert!(!run_stdout.contains("elsewhere-ran"), "{run_stdout}");
        let events = clean_exit_events(stopped);
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(events[0]["file"]["name"], "busybox-elsewhere");
        assert_eq!(events[0]["enforcer"]["backend"], backend);
        // The policy's name is the ruleset events report.
        assert_eq!(
            events[0]["rule"]["ruleset"], "plugins-allowed",
            "{:#}",
            events[0]
        );
    };
    if let Some(agent) = start_lsm(&["--policy", &policy]) {
        let (run, stopped) = run_under(agent, &image, &[], script);
        check(&stopped, &run.stdout, "lsm");
    }
    let agent = start(&["--backend", "signal", "--policy", &policy]);
    let (run, stopped) = run_under(agent, &image, &[], script);
    check(&stopped, &run.stdout, "signal");
}

#[test]
fn run_refuses_what_it_cannot_enforce_with_the_place() {
    let dir = scratch("refused");
    let file = dir.join("p.yaml");
    fs::write(
        &file,
        VALID.replace("  mode: audit", "  selector: {host: true}\n  mode: audit"),
    )
    .expect("writing the policy");
    // Drift rules never apply to the host: the agent does not start rather
    // than pretend they do.
    let failure = Agent::start(&["--policy", &file.display().to_string()])
        .expect_err("the agent refuses the selector");
    assert!(
        failure.stderr.contains(&format!(
            "{}:1:1: spec.selector.host: drift rules never apply to the host",
            file.display()
        )),
        "{}",
        failure.stderr
    );
    // The drift flags belong in the file once there is one.
    let output = Command::new(agent::binary())
        .args(["run", "--policy"])
        .arg(&file)
        .args(["--allow-path", "/x/*"])
        .output()
        .expect("running enforcer");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot be used with"),
        "{output:?}"
    );
}
