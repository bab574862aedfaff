//! `enforcer vshield from-trivy`: a Trivy JSON report (schema 2) becomes
//! vShield documents, one per vulnerability and package, naming the files
//! the vulnerable package put in the image.
//!
//! OS packages' files come from the package database inside the image root
//! ([`crate::packages`]); language packages name their file in the report
//! (`PkgPath`: a jar, a Go or Rust binary, a Node package's directory, a
//! Python distribution's `RECORD`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use serde::Deserialize;

use crate::{packages::Packages, policy::Mode, resolve::Root};

/// The largest Python `RECORD` read.
const RECORD_MAX: u64 = 16 << 20;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    #[serde(default)]
    pub artifact_name: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub results: Option<Vec<ReportResult>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReportResult {
    pub target: String,
    /// `os-pkgs` or `lang-pkgs`.
    #[serde(default)]
    pub class: Option<String>,
    /// `debian`, `alpine`, `jar`, `gobinary`, `node-pkg`, `python-pkg`, ...
    #[serde(default, rename = "Type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub vulnerabilities: Option<Vec<Vulnerability>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Vulnerability {
    #[serde(rename = "VulnerabilityID")]
    pub id: String,
    pub pkg_name: String,
    #[serde(default)]
    pub pkg_path: Option<String>,
    #[serde(default)]
    pub installed_version: Option<String>,
    #[serde(default)]
    pub fixed_version: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
}

/// How the documents are written.
#[derive(Clone, Debug)]
pub struct Options {
    pub mode: Mode,
    /// Select every container instead of the report's image.
    pub every_container: bool,
}

/// One vShield to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shield {
    pub name: String,
    pub vulnerability: String,
    pub package: String,
    pub version: String,
    pub fixed: String,
    pub severity: String,
    pub title: String,
    pub files: BTreeSet<String>,
}

/// A finding that became no vShield, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub vulnerability: String,
    pub package: String,
    pub reason: String,
}

/// What a report turned into.
#[derive(Debug, Default)]
pub struct Conversion {
    pub shields: Vec<Shield>,
    pub skipped: Vec<Skipped>,
}

/// Turns the report's findings into vShields. `root` is the image's root
/// directory, where package databases and Python records are read; without
/// it only language packages with a file path become vShields.
pub fn convert(report: &Report, root: Option<&Root>) -> Conversion {
    let packages = root.map(Packages::open);
    let mut by_key: BTreeMap<(String, String), Shield> = BTreeMap::new();
    let mut conversion = Conversion::default();
    for result in report.results.iter().flatten() {
        for finding in result.vulnerabilities.iter().flatten() {
            let skip = |reason: String| Skipped {
                vulnerability: finding.id.clone(),
                package: finding.pkg_name.clone(),
                reason,
            };
            if !is_enforceable_id(&finding.id) {
                conversion.skipped.push(skip(
                    "not a CVE or GHSA id, which vShields are named by".to_owned(),
                ));
                continue;
            }
            let files = match result.class.as_deref() {
                Some("os-pkgs") => match &packages {
                    Some(Ok(packages)) => packages.files(&finding.pkg_name),
                    Some(Err(error)) => Err(error.clone()),
                    None => {
                        Err("an OS package: its files are read from the image (--root)".to_owned())
                    }
                },
                _ => language_files(result, finding, root),
            };
            let files = match files {
                Ok(files) => files,
                Err(reason) => {
                    conversion.skipped.push(skip(reason));
                    continue;
                }
            };
            let (usable, unusable): (Vec<String>, Vec<String>) =
                files.into_iter().partition(|file| !has_glob_syntax(file));
            for file in unusable {
                conversion.skipped.push(skip(format!(
                    "{file:?} has glob characters in its name; name it in the policy by hand"
                )));
            }
            if usable.is_empty() {
                continue;
            }
            by_key
                .entry((finding.id.clone(), finding.pkg_name.clone()))
                .or_insert_with(|| Shield {
                    name: String::new(),
                    vulnerability: finding.id.clone(),
                    package: finding.pkg_name.clone(),
                    version: finding.installed_version.clone().unwrap_or_default(),
                    fixed: finding.fixed_version.clone().unwrap_or_default(),
                    severity: finding.severity.clone().unwrap_or_default(),
                    title: finding.title.clone().unwrap_or_default(),
                    files: BTreeSet::new(),
                })
                .files
                .extend(usable);
        }
    }
    let mut names = BTreeSet::new();
    for mut shield in by_key.into_values() {
        shield.name = unique_name(&shield.vulnerability, &shield.package, &mut names);
        conversion.shields.push(shield);
    }
    conversion
}

/// The file(s) a language package is: from `PkgPath`.
fn language_files(
    result: &ReportResult,
    finding: &Vulnerability,
    root: Option<&Root>,
) -> Result<Vec<String>, String> {
    let Some(path) = finding.pkg_path.as_deref().filter(|path| !path.is_empty()) else {
        return Err(format!(
            "the report names no file for this package (target {})",
            result.target
        ));
    };
    let path = format!("/{}", path.trim_start_matches('/'));
    let kind = result.kind.as_deref().unwrap_or_default();
    let archive = [".jar", ".war", ".ear", ".par", ".hpi", ".jpi"]
        .iter()
        .any(|extension| path.ends_with(extension));
    if archive || matches!(kind, "gobinary" | "rustbinary") {
        return Ok(vec![path]);
    }
    if let Some(directory) = path.strip_suffix("/package.json") {
        return Ok(vec![format!("{directory}/**")]);
    }
    if path.ends_with("/METADATA") && path.contains(".dist-info/") {
        return python_record(&path, root);
    }
    Err(format!(
        "a {kind} package at {path}: which files it consists of is not known for this kind"
    ))
}

/// A Python distribution's files, from the `RECORD` beside its `METADATA`.
fn python_record(metadata: &str, root: Option<&Root>) -> Result<Vec<String>, String> {
    let Some(root) = root else {
        return Err("a Python package: its RECORD is read from the image (--root)".to_owned());
    };
    let dist_info = metadata.trim_end_matches("/METADATA");
    let site_packages = dist_info.rsplit_once('/').map_or("", |(parent, _)| parent);
    let record = format!("{dist_info}/RECORD");
    let text = root
        .read(&record, RECORD_MAX)
        .map_err(|error| format!("reading {record}: {error}"))?;
    let files: Vec<String> = String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|line| line.split(',').next())
        .filter(|file| !file.is_empty() && !file.starts_with('/') && !file.contains(".."))
        .map(|file| format!("{site_packages}/{file}"))
        .filter(|file| root.is_regular_file(file))
        .collect();
    if files.is_empty() {
        return Err(format!("{record} lists no file that exists in the image"));
    }
    Ok(files)
}

fn is_enforceable_id(id: &str) -> bool {
    id.starts_with("CVE-") || id.starts_with("GHSA-")
}

fn has_glob_syntax(path: &str) -> bool {
    path.trim_end_matches("/**")
        .contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// `cve-2021-44228-log4j-core`: a DNS label, unique among `taken`.
fn unique_name(vulnerability: &str, package: &str, taken: &mut BTreeSet<String>) -> String {
    let mut base = String::new();
    for c in format!("{vulnerability}-{package}").chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            base.push(c);
        } else if !base.ends_with('-') {
            base.push('-');
        }
    }
    let mut base = base.trim_matches('-').to_owned();
    base.truncate(56);
    let base = base.trim_end_matches('-').to_owned();
    let mut name = base.clone();
    let mut number = 2;
    while !taken.insert(name.clone()) {
        name = format!("{base}-{number}");
        number += 1;
    }
    name
}

/// The policy file: a header, then one document per vShield. Pure.
pub fn render(report: &Report, conversion: &Conversion, options: &Options, source: &str) -> String {
    let quote = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
    let artifact = report
        .artifact_name
        .as_deref()
        .unwrap_or("an unnamed artifact");
    let image = (report.artifact_type.as_deref() == Some("container_image"))
        .then_some(report.artifact_name.as_deref())
        .flatten()
        .filter(|_| !options.every_container);
    let selector = image.map_or_else(
        || "{}                      # every container".to_owned(),
        |image| format!("{{images: [{}]}}", quote(image)),
    );
    let mut out = format!(
        "# vShields for the vulnerable packages Trivy found in {artifact} (report {source}),\n\
         # written by `enforcer vshield from-trivy`: {} vShields, {} findings skipped.\n",
        conversion.shields.len(),
        conversion.skipped.len()
    );
    for shield in &conversion.shields {
        let fixed = if shield.fixed.is_empty() {
            "no fixed version".to_owned()
        } else {
            format!("fixed in {}", shield.fixed)
        };
        let title = shield.title.replace(['\n', '\r'], " ");
        let title = if title.trim().is_empty() {
            String::new()
        } else {
            format!(": {title}")
        };
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "---\n# {} in {} {} ({fixed}), {}{title}\n\
             apiVersion: enforcer.dev/v1alpha1\nkind: VShield\nmetadata:\n  name: {}\nspec:\n  \
             vulnerability: {}\n  mode: {}\n  selector: {selector}\n  operations: [exec, open, load]\n  files:\n",
            shield.vulnerability,
            shield.package,
            shield.version,
            shield.severity,
            shield.name,
            shield.vulnerability,
            options.mode
        );
        for file in &shield.files {
            let _ = writeln!(out, "    - {}", quote(file));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{
      "SchemaVersion": 2,
      "ArtifactName": "registry.example/app:1.0",
      "ArtifactType": "container_image",
      "Results": [
        {"Target": "registry.example/app:1.0 (debian 12.5)", "Class": "os-pkgs", "Type": "debian",
         "Vulnerabilities": [
           {"VulnerabilityID": "CVE-2024-0001", "PkgName": "libssl3", "InstalledVersion": "3.0.11-1",
            "FixedVersion": "3.0.13-1", "Severity": "HIGH", "Title": "a title\nover two lines"},
           {"VulnerabilityID": "TEMP-0841856-B18BAF", "PkgName": "bash", "Severity": "LOW"}
         ]},
        {"Target": "Java", "Class": "lang-pkgs", "Type": "jar",
         "Vulnerabilities": [
           {"VulnerabilityID": "CVE-2021-44228", "PkgName": "org.apache.logging.log4j:log4j-core",
            "PkgPath": "app/lib/log4j-core-2.14.1.jar", "InstalledVersion": "2.14.1",
            "FixedVersion": "2.15.0", "Severity": "CRITICAL"},
           {"VulnerabilityID": "CVE-2021-44228", "PkgName": "org.apache.logging.log4j:log4j-core",
            "PkgPath": "opt/other/log4j-core-2.14.1.jar"}
         ]},
        {"Target": "Node.js", "Class": "lang-pkgs", "Type": "node-pkg",
         "Vulnerabilities": [
           {"VulnerabilityID": "GHSA-aaaa-bbbb-cccc", "PkgName": "lodash",
            "PkgPath": "app/node_modules/lodash/package.json"}
         ]},
        {"Target": "nothing", "Class": "lang-pkgs", "Vulnerabilities": null}
      ]
    }"#;

    #[test]
    fn findings_become_one_vshield_per_vulnerability_and_package() {
        let report: Report = serde_json::from_str(REPORT).unwrap();
        let conversion = convert(&report, None);
        let names: Vec<&str> = conversion.shields.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "cve-2021-44228-org-apache-logging-log4j-log4j-core",
                "ghsa-aaaa-bbbb-cccc-lodash"
            ]
        );
        assert_eq!(
            conversion.shields[0].files,
            [
                "/app/lib/log4j-core-2.14.1.jar".to_owned(),
                "/opt/other/log4j-core-2.14.1.jar".to_owned()
            ]
            .into()
        );
        assert_eq!(
            conversion.shields[1].files,
            ["/app/node_modules/lodash/**".to_owned()].into()
        );
        // The OS package needs the image; the Debian-only id cannot name a vShield.
        let skipped: Vec<(&str, &str)> = conversion
            .skipped
            .iter()
            .map(|s| (s.vulnerability.as_str(), s.package.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [
                ("CVE-2024-0001", "libssl3"),
                ("TEMP-0841856-B18BAF", "bash")
            ]
        );
        assert!(conversion.skipped[0].reason.contains("--root"));
    }

    #[test]
    fn the_output_is_a_valid_policy_in_audit_mode_for_the_image() {
        let report: Report = serde_json::from_str(REPORT).unwrap();
        let conversion = convert(&report, None);
        let options = Options {
            mode: Mode::Audit,
            every_container: false,
        };
        let text = render(&report, &conversion, &options, "report.json");
        assert!(
            text.contains("selector: {images: [\"registry.example/app:1.0\"]}"),
            "{text}"
        );
        let dir = std::env::temp_dir().join(format!("enforcer-trivy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vshields.yaml");
        std::fs::write(&file, &text).unwrap();
        let set = crate::policy::load::load(std::slice::from_ref(&file))
            .unwrap_or_else(|errors| panic!("{errors:#?}\n{text}"));
        assert_eq!(set.vshields.len(), 2);
        let every = Options {
            mode: Mode::Enforce,
            every_container: true,
        };
        std::fs::write(&file, render(&report, &conversion, &every, "report.json")).unwrap();
        let policy = crate::policy::load::agent_policy_at(std::slice::from_ref(&file))
            .unwrap_or_else(|errors| panic!("{errors:#?}"));
        assert_eq!(policy.vshields[0].mode, Mode::Enforce);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_are_dns_labels_and_unique() {
        let mut taken = BTreeSet::new();
        let long = "x".repeat(80);
        let first = unique_name("CVE-2024-0001", &long, &mut taken);
        let second = unique_name("CVE-2024-0001", &long, &mut taken);
        assert!(first.len() <= 63 && second.len() <= 63);
        assert_ne!(first, second);
        assert_eq!(
            unique_name("CVE-2024-0002", "Foo__Bar.", &mut taken),
            "cve-2024-0002-foo-bar"
        );
    }
}
