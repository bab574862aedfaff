//! Turns decoded kernel events into audit records: wall-clock time, names for
//! kernel codes, host and agent context.

use enforcer_common::{DriftEvent, backend, decision, event_flags, layer, reason, via};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    decode::AuditEvent,
    record::{
        Agent, AuditRecord, Enforcer, Event, File, Host, Id, ParentPid, Process, Rule, ThreadId,
    },
};

/// Converts `bpf_ktime_get_boot_ns()` stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// `CLOCK_REALTIME` minus `CLOCK_BOOTTIME`, in nanoseconds.
    realtime_minus_boot_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks exist on every
    // kernel this agent supports, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl BootClock {
    pub fn now() -> Self {
        Self {
            realtime_minus_boot_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    #[cfg(test)]
    pub(crate) const fn with_offset(realtime_minus_boot_ns: i128) -> Self {
        Self {
            realtime_minus_boot_ns,
        }
    }

    pub fn wall(&self, boot_ns: u64) -> OffsetDateTime {
        let ns = i128::from(boot_ns) + self.realtime_minus_boot_ns;
        OffsetDateTime::from_unix_timestamp_nanos(ns).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Context added to every record.
#[derive(Clone, Debug)]
pub struct Enricher {
    pub clock: BootClock,
    pub hostname: String,
    pub ruleset: String,
}

impl Enricher {
    pub fn record(&self, event: &AuditEvent) -> AuditRecord {
        match event {
            AuditEvent::Drift(drift) => self.drift(drift),
        }
    }

    fn drift(&self, e: &DriftEvent) -> AuditRecord {
        let Decision {
            name: decision_name,
            verb: outcome_verb,
            outcome,
            event_type,
        } = decision(e.decision);
        let (via_name, category) = via(e.via);
        let (layer_name, reason_text) = layer(e.layer);
        let path_len = (e.path_len as usize).min(e.path.len());
        let path = (e.flags & event_flags::NO_PATH == 0)
            .then(|| String::from_utf8_lossy(&e.path[..path_len]).into_owned());
        AuditRecord {
            timestamp: self
                .clock
                .wall(e.header.boot_ns)
                .format(&Rfc3339)
                .unwrap_or_default(),
            event: Event {
                kind: "alert",
                category: [category, "intrusion_detection"],
                r#type: ["start", event_type],
                action: format!("{via_name}-{outcome_verb}"),
                outcome,
                reason: reason_text.to_owned(),
                module: "enforcer",
                dataset: "enforcer.audit",
            },
            rule: Rule {
                name: "drift-prevention",
                category: "drift",
                ruleset: self.ruleset.clone(),
            },
            process: Process {
                pid: e.tgid,
                thread: ThreadId { id: e.pid },
                parent: ParentPid { pid: e.ppid },
                name: c_string(&e.comm),
                executable: path.clone(),
            },
            file: File {
                path,
                name: c_string(&e.name),
                inode: e.inode.to_string(),
                device: format!("{}:{}", e.dev >> 20, e.dev & 0xf_ffff),
                r#type: "file",
            },
            user: Id {
                id: e.uid.to_string(),
            },
            group: Id {
                id: e.gid.to_string(),
            },
            host: Host {
                hostname: self.hostname.clone(),
            },
            agent: Agent {
                r#type: "enforcer",
                version: env!("CARGO_PKG_VERSION"),
            },
            enforcer: Enforcer {
                decision: decision_name,
                reason: match e.reason {
                    reason::DRIFT => "drift",
                    _ => "unknown",
                },
                backend: match e.backend {
                    backend::LSM => "lsm",
                    backend::SIGNAL => "signal",
                    _ => "unknown",
                },
                via: via_name,
                layer: layer_name,
                mount_namespace: e.mnt_ns,
                cgroup_id: e.cgroup_id,
                path_truncated: e.flags & event_flags::PATH_TRUNCATED != 0,
            },
        }
    }
}

/// How a kernel decision code reads in a record.
struct Decision {
    /// `enforcer.decision`.
    name: &'static str,
    /// The outcome part of `event.action`.
    verb: &'static str,
    /// `event.outcome`.
    outcome: &'static str,
    /// The second `event.type`.
    event_type: &'static str,
}

fn decision(code: u32) -> Decision {
    let (name, verb, outcome, event_type) = match code {
        decision::BLOCKED => ("blocked", "denied", "failure", "denied"),
        decision::KILLED => ("killed", "killed", "failure", "denied"),
        decision::AUDIT => ("audit", "audited", "success", "allowed"),
        decision::KILL_FAILED => ("kill-failed", "kill-failed", "success", "allowed"),
        _ => ("unknown", "unknown", "unknown", "info"),
    };
    Decision {
        name,
        verb,
        outcome,
        event_type,
    }
}

/// `enforcer.via` and `event.category` for a route code.
fn via(code: u32) -> (&'static str, &'static str) {
    match code {
        via::EXEC => ("exec", "process"),
        via::MMAP => ("mmap", "library"),
        via::MPROTECT => ("mprotect", "library"),
        _ => ("unknown", "process"),
    }
}

/// `enforcer.layer` and `event.reason` for a layer code.
fn layer(code: u32) -> (&'static str, &'static str) {
    match code {
        layer::OVERLAY_UPPER => (
            "overlay-upper",
            "file is not part of the container image (created or modified after the container started)",
        ),
        layer::MEMFD => (
            "memfd",
            "fileless execution: the file is a memfd, not part of the container image",
        ),
        layer::WRITABLE_MOUNT => (
            "writable-mount",
            "file is on a writable mount outside the container image (tmpfs or volume)",
        ),
        layer::WRITTEN => (
            "written",
            "file was written, created, made executable, renamed or linked in the container",
        ),
        _ => ("unknown", "file is not part of the container image"),
    }
}

/// A NUL-padded kernel string.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// This host's name, for `host.hostname`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use enforcer_common::{backend, decision, event_flags, layer, via};
    use serde_json::Value;

    use super::*;
    use crate::audit::decode::tests::drift_event;

    fn enricher() -> Enricher {
        Enricher {
            // 2026-01-01T00:00:00Z minus 5 s of boot time.
            clock: BootClock::with_offset(1_767_225_600_000_000_000 - 5_000_000_000),
            hostname: "node-1".to_owned(),
            ruleset: "builtin-default".to_owned(),
        }
    }

    fn json(event: &DriftEvent) -> Value {
        serde_json::to_value(enricher().record(&AuditEvent::Drift(*event))).unwrap()
    }

    #[test]
    fn blocked_exec_uses_ecs_field_names() {
        let v = json(&drift_event("/tmp/dropped"));
        assert_eq!(v["@timestamp"], "2026-01-01T00:00:00.000000123Z");
        assert_eq!(v["event"]["kind"], "alert");
        assert_eq!(v["event"]["category"][0], "process");
        assert_eq!(v["event"]["action"], "exec-denied");
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["event"]["type"][1], "denied");
        assert_eq!(v["rule"]["name"], "drift-prevention");
        assert_eq!(v["rule"]["ruleset"], "builtin-default");
        assert_eq!(v["process"]["pid"], 4242);
        assert_eq!(v["process"]["parent"]["pid"], 4200);
        assert_eq!(v["process"]["name"], "sh");
        assert_eq!(v["process"]["executable"], "/tmp/dropped");
        assert_eq!(v["file"]["path"], "/tmp/dropped");
        assert_eq!(v["file"]["name"], "dropped");
        assert_eq!(v["file"]["inode"], "123456");
        assert_eq!(v["file"]["device"], "0:45");
        assert_eq!(v["user"]["id"], "1000");
        assert_eq!(v["group"]["id"], "1001");
        assert_eq!(v["host"]["hostname"], "node-1");
        assert_eq!(v["enforcer"]["decision"], "blocked");
        assert_eq!(v["enforcer"]["reason"], "drift");
        assert_eq!(v["enforcer"]["backend"], "lsm");
        assert_eq!(v["enforcer"]["via"], "exec");
        assert_eq!(v["enforcer"]["layer"], "overlay-upper");
        assert_eq!(v["enforcer"]["cgroup_id"], 7777);
        assert!(v["enforcer"].get("path_truncated").is_none());
    }

    #[test]
    fn killed_and_audit_decisions() {
        let mut event = drift_event("/x");
        event.decision = decision::KILLED;
        event.backend = backend::SIGNAL;
        let v = json(&event);
        assert_eq!(v["enforcer"]["decision"], "killed");
        assert_eq!(v["enforcer"]["backend"], "signal");
        assert_eq!(v["event"]["action"], "exec-killed");

        event.decision = decision::AUDIT;
        let v = json(&event);
        assert_eq!(v["enforcer"]["decision"], "audit");
        assert_eq!(v["event"]["action"], "exec-audited");
        assert_eq!(v["event"]["outcome"], "success");
        assert_eq!(v["event"]["type"][1], "allowed");
    }

    #[test]
    fn mappings_are_library_events_without_a_path() {
        let mut event = drift_event("");
        event.via = via::MMAP;
        event.flags = event_flags::NO_PATH;
        event.name[..10].copy_from_slice(b"libdrop.so");
        let v = json(&event);
        assert_eq!(v["event"]["category"][0], "library");
        assert_eq!(v["event"]["action"], "mmap-denied");
        assert_eq!(v["enforcer"]["via"], "mmap");
        assert_eq!(v["file"]["name"], "libdrop.so");
        assert!(v["file"].get("path").is_none());
        assert!(v["process"].get("executable").is_none());

        event.via = via::MPROTECT;
        assert_eq!(json(&event)["event"]["action"], "mprotect-denied");
    }

    #[test]
    fn layers_have_names_and_reasons() {
        let mut event = drift_event("/x");
        for (code, name, words) in [
            (
                layer::OVERLAY_UPPER,
                "overlay-upper",
                "not part of the container image",
            ),
            (layer::MEMFD, "memfd", "fileless"),
            (layer::WRITABLE_MOUNT, "writable-mount", "writable mount"),
            (layer::WRITTEN, "written", "written"),
        ] {
            event.layer = code;
            let v = json(&event);
            assert_eq!(v["enforcer"]["layer"], name);
            assert!(
                v["event"]["reason"].as_str().unwrap().contains(words),
                "{v}"
            );
        }
    }

    #[test]
    fn unknown_codes_are_named_unknown_not_dropped() {
        let mut event = drift_event("/x");
        event.decision = 77;
        event.backend = 9;
        event.via = 9;
        event.layer = 9;
        let v = json(&event);
        assert_eq!(v["enforcer"]["decision"], "unknown");
        assert_eq!(v["enforcer"]["backend"], "unknown");
        assert_eq!(v["enforcer"]["via"], "unknown");
        assert_eq!(v["enforcer"]["layer"], "unknown");
    }

    #[test]
    fn truncated_and_missing_paths_are_flagged() {
        let mut event = drift_event("/x");
        event.flags = event_flags::PATH_TRUNCATED;
        assert_eq!(json(&event)["enforcer"]["path_truncated"], true);

        event.flags = event_flags::NO_PATH;
        event.path_len = 0;
        let v = json(&event);
        assert!(v["file"].get("path").is_none());
        assert!(v["process"].get("executable").is_none());
    }

    #[test]
    fn a_corrupt_path_length_cannot_overrun() {
        let mut event = drift_event("/x");
        event.path_len = u32::MAX;
        let v = json(&event);
        assert_eq!(
            v["file"]["path"].as_str().unwrap().len(),
            enforcer_common::EXEC_PATH_LEN
        );
    }
}
