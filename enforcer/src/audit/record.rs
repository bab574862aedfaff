//! Audit records in Elastic Common Schema field names, one JSON object per
//! line. Fields without an ECS equivalent live under `enforcer.*`.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    #[serde(rename = "@timestamp")]
    pub timestamp: String,
    pub event: Event,
    pub rule: Rule,
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
    pub category: [&'static str; 2],
    pub r#type: [&'static str; 2],
    /// `exec-denied`, `exec-killed`, `exec-audited`, `exec-kill-failed`.
    pub action: &'static str,
    /// `failure` when the program did not run, `success` when it did.
    pub outcome: &'static str,
    pub reason: String,
    pub module: &'static str,
    pub dataset: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub name: &'static str,
    pub category: &'static str,
    pub ruleset: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub thread: ThreadId,
    pub parent: ParentPid,
    /// The task's comm when the decision was made: with the lsm backend the
    /// program that called exec, with signal the new program.
    pub name: String,
    /// The path given to exec.
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
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
    /// `drift`.
    pub reason: &'static str,
    /// `lsm` or `signal`.
    pub backend: &'static str,
    /// Where the file lives: `overlay-upper`.
    pub layer: &'static str,
    pub mount_namespace: u32,
    pub cgroup_id: u64,
    /// Set when the path was longer than the kernel buffer and was cut.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub path_truncated: bool,
}
