//! `enforcer policy check` and `enforcer policy schema`, as users run them.
//! No kernel involved: these run anywhere, also without root.

use std::{fs, path::PathBuf, process::Command};

use enforcer_tests::agent;

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
