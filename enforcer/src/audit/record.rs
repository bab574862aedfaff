//! Audit records in Elastic Common Schema field names, one JSON object per
//! line. Fields without an ECS equivalent live under `enforcer.*`.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: Event,
    pub rule: Rule,
    /// The vulnerability a vShield stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vulnerability: Option<Vulnerability>,
    pub process: Process,
    pub file: File,
    pub user: Id,
    pub group: Id,
    pub host: Host,
    pub agent: Agent,
    pub enforcer: Enforcer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    /// `alert`: every record is a security decision.
    pub kind: &'static str,
    /// `process` for execs, `library` for executable mappings; with
    /// `intrusion_detection`.
    pub category: [&'static str; 2],
    pub r#type: [&'static str; 2],
    /// `ROUTE-OUTCOME`: route `exec`, `mmap`, `mprotect` or `open`; outcome
    /// `denied`, `killed`, `audited` or `kill-failed`.
    pub action: String,
    /// `failure` when the program did not run, `success` when it did.
    pub outcome: &'static str,
    pub reason: String,
    pub module: &'static str,
    pub dataset: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// `drift-prevention`, or the vShield's name.
    pub name: String,
    /// `drift` or `vshield`.
    pub category: &'static str,
    pub ruleset: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Vulnerability {
    /// `CVE-2021-44228`, `GHSA-...`.
    pub id: String,
    /// `CVE` or `GHSA`.
    pub enumeration: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub thread: ThreadId,
    pub parent: ParentPid,
    /// The task's comm when the decision was made: with the lsm backend the
    /// program that called exec, with signal the new program.
    pub name: String,
    /// The path given to exec (absent for mappings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ThreadId {
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParentPid {
    pub pid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct File {
    /// The path given to exec; for vShields, the file's path in the image
    /// as the agent resolved it; mappings of drift files have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The file's name (last path component).
    pub name: String,
    /// ECS keeps inode numbers as strings.
    pub inode: String,
    /// `major:minor` of the file system the file is on.
    pub device: String,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Id {
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Host {
    pub hostname: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Agent {
    pub r#type: &'static str,
    pub version: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Enforcer {
    /// `blocked`, `killed`, `audit`, `kill-failed`.
    pub decision: &'static str,
    /// `drift` or `vshield`.
    pub reason: &'static str,
    /// `lsm` or `signal`.
    pub backend: &'static str,
    /// How the file was about to run: `exec`, `mmap` (the dynamic loader or
    /// a library load), `mprotect`, `open`.
    pub via: &'static str,
    /// Drift only: why the file is not from the image: `overlay-upper`,
    /// `memfd`, `writable-mount`, `written`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<&'static str>,
    pub mount_namespace: u32,
    pub cgroup_id: u64,
    /// Set when the path was longer than the kernel buffer and was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
}
