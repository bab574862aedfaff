//! ECS JSON of decision records, written directly rather than through serde.
//!
//! A flood is made of decision records, and `serde_json` spent a third of a
//! record's cost on them: it escapes every key as it writes it (keys are
//! fixed, so ours are escaped once, in the literals below) and writes each
//! value in several small pieces. The serde derives in [`super::record`]
//! stay the definition of the form: the tests check, byte for byte, that
//! this encoder writes what `serde_json` writes for the same record, over
//! records with and without every optional field and with strings that
//! need escaping. Policy and accounting records are few, and serde writes
//! them.

use std::collections::BTreeMap;

use super::record::{
    Ancestor, AuditRecord, Container, Enforcer, Event, File, Kubernetes, Process, Record,
};

/// Appends `record` in ECS as one JSON object (no newline) to `out`.
pub fn write(record: &Record, out: &mut Vec<u8>) -> serde_json::Result<()> {
    match record {
        Record::Decision(r) => {
            decision(r, out);
            Ok(())
        }
        other => serde_json::to_writer(out, other),
    }
}

fn decision(r: &AuditRecord, out: &mut Vec<u8>) {
    // A record is about 1 KiB; one reservation covers most of them.
    out.reserve(1280);
    raw(out, r#"{"@timestamp":"#);
    string(out, &r.timestamp);
    raw(out, r#","event":"#);
    event(out, &r.event);
    raw(out, r#","rule":{"name":"#);
    string(out, &r.rule.name);
    raw(out, r#","category":"#);
    string(out, r.rule.category);
    raw(out, r#","ruleset":"#);
    string(out, &r.rule.ruleset);
    out.push(b'}');
    if let Some(vulnerability) = &r.vulnerability {
        raw(out, r#","vulnerability":{"id":"#);
        string(out, &vulnerability.id);
        raw(out, r#","enumeration":"#);
        string(out, vulnerability.enumeration);
        out.push(b'}');
    }
    if let Some(container) = &r.container {
        raw(out, r#","container":"#);
        container_object(out, container);
    }
    if let Some(kubernetes) = &r.kubernetes {
        raw(out, r#","kubernetes":"#);
        kubernetes_object(out, kubernetes);
    }
    raw(out, r#","process":"#);
    process(out, &r.process);
    raw(out, r#","file":"#);
    file(out, &r.file);
    raw(out, r#","user":{"id":"#);
    string(out, &r.user.id);
    raw(out, r#"},"group":{"id":"#);
    string(out, &r.group.id);
    raw(out, r#"},"host":{"hostname":"#);
    string(out, &r.host.hostname);
    raw(out, r#"},"agent":{"type":"#);
    string(out, r.agent.r#type);
    raw(out, r#","version":"#);
    string(out, r.agent.version);
    raw(out, r#"},"enforcer":"#);
    enforcer(out, &r.enforcer);
    out.push(b'}');
}

fn event(out: &mut Vec<u8>, e: &Event) {
    raw(out, r#"{"kind":"#);
    string(out, e.kind);
    raw(out, r#","category":"#);
    pair(out, e.category);
    raw(out, r#","type":"#);
    pair(out, e.r#type);
    raw(out, r#","action":"#);
    string(out, &e.action);
    raw(out, r#","outcome":"#);
    string(out, e.outcome);
    raw(out, r#","reason":"#);
    string(out, &e.reason);
    raw(out, r#","module":"#);
    string(out, e.module);
    raw(out, r#","dataset":"#);
    string(out, e.dataset);
    out.push(b'}');
}

fn pair(out: &mut Vec<u8>, [first, second]: [&str; 2]) {
    out.push(b'[');
    string(out, first);
    out.push(b',');
    string(out, second);
    out.push(b']');
}

fn container_object(out: &mut Vec<u8>, c: &Container) {
    raw(out, r#"{"id":"#);
    string(out, &c.id);
    raw(out, r#","runtime":"#);
    string(out, c.runtime);
    if let Some(name) = &c.name {
        raw(out, r#","name":"#);
        string(out, name);
    }
    if let Some(image) = &c.image {
        raw(out, r#","image":{"name":"#);
        string(out, &image.name);
        if !image.tag.is_empty() {
            raw(out, r#","tag":"#);
            strings(out, &image.tag);
        }
        if let Some(hash) = &image.hash {
            raw(out, r#","hash":{"all":"#);
            strings(out, &hash.all);
            out.push(b'}');
        }
        out.push(b'}');
    }
    out.push(b'}');
}

fn kubernetes_object(out: &mut Vec<u8>, k: &Kubernetes) {
    out.push(b'{');
    if let Some(namespace) = &k.namespace {
        raw(out, r#""namespace":"#);
        string(out, namespace);
        out.push(b',');
    }
    raw(out, r#""pod":{"#);
    let mut first = true;
    for (key, value) in [(r#""name":"#, &k.pod.name), (r#""uid":"#, &k.pod.uid)] {
        if let Some(value) = value {
            if !first {
                out.push(b',');
            }
            first = false;
            raw(out, key);
            string(out, value);
        }
    }
    out.push(b'}');
    if let Some(labels) = &k.labels {
        raw(out, r#","labels":"#);
        map(out, labels);
    }
    if let Some(container) = &k.container {
        raw(out, r#","container":{"kind":"#);
        string(out, container.kind);
        out.push(b'}');
    }
    out.push(b'}');
}

fn process(out: &mut Vec<u8>, p: &Process) {
    raw(out, r#"{"pid":"#);
    number(out, p.pid);
    raw(out, r#","thread":{"id":"#);
    number(out, p.thread.id);
    raw(out, r#"},"parent":{"pid":"#);
    number(out, p.parent.pid);
    if let Some(name) = &p.parent.name {
        raw(out, r#","name":"#);
        string(out, name);
    }
    if let Some(executable) = &p.parent.executable {
        raw(out, r#","executable":"#);
        string(out, executable);
    }
    out.push(b'}');
    if let Some(leader) = &p.entry_leader {
        raw(out, r#","entry_leader":"#);
        ancestor(out, leader);
    }
    raw(out, r#","name":"#);
    string(out, &p.name);
    if let Some(executable) = &p.executable {
        raw(out, r#","executable":"#);
        string(out, executable);
    }
    out.push(b'}');
}

fn ancestor(out: &mut Vec<u8>, a: &Ancestor) {
    raw(out, r#"{"pid":"#);
    number(out, a.pid);
    if !a.name.is_empty() {
        raw(out, r#","name":"#);
        string(out, &a.name);
    }
    if let Some(executable) = &a.executable {
        raw(out, r#","executable":"#);
        string(out, executable);
    }
    out.push(b'}');
}

fn file(out: &mut Vec<u8>, f: &File) {
    out.push(b'{');
    if let Some(path) = &f.path {
        raw(out, r#""path":"#);
        string(out, path);
        out.push(b',');
    }
    raw(out, r#""name":"#);
    string(out, &f.name);
    raw(out, r#","inode":"#);
    string(out, &f.inode);
    raw(out, r#","device":"#);
    string(out, &f.device);
    raw(out, r#","type":"#);
    string(out, f.r#type);
    out.push(b'}');
}

fn enforcer(out: &mut Vec<u8>, e: &Enforcer) {
    raw(out, r#"{"decision":"#);
    string(out, e.decision);
    raw(out, r#","reason":"#);
    string(out, e.reason);
    raw(out, r#","backend":"#);
    string(out, e.backend);
    raw(out, r#","via":"#);
    string(out, e.via);
    if let Some(layer) = e.layer {
        raw(out, r#","layer":"#);
        string(out, layer);
    }
    raw(out, r#","mount_namespace":"#);
    number(out, e.mount_namespace);
    raw(out, r#","cgroup_id":"#);
    number(out, e.cgroup_id);
    if !e.lineage.is_empty() {
        raw(out, r#","lineage":["#);
        for (i, a) in e.lineage.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            ancestor(out, a);
        }
        out.push(b']');
    }
    if let Some(session) = e.session {
        raw(out, r#","session":"#);
        string(out, session);
    }
    if let Some(exemption) = e.exemption {
        raw(out, r#","exemption":"#);
        string(out, exemption);
    }
    if e.path_truncated {
        raw(out, r#","path_truncated":true"#);
    }
    if e.suppressed != 0 {
        raw(out, r#","suppressed":"#);
        number(out, e.suppressed);
    }
    out.push(b'}');
}

fn strings(out: &mut Vec<u8>, values: &[String]) {
    out.push(b'[');
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, value);
    }
    out.push(b']');
}

fn map(out: &mut Vec<u8>, entries: &BTreeMap<String, String>) {
    out.push(b'{');
    for (i, (key, value)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, key);
        out.push(b':');
        string(out, value);
    }
    out.push(b'}');
}

/// A fragment that is already JSON.
fn raw(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(json.as_bytes());
}

fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// `value` as a JSON string, escaped as `serde_json` escapes (the short forms
/// it uses, `\u00XX` in lower case for the other control characters,
/// everything else as it is).
fn string(out: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    out.push(b'"');
    // Most values need no escaping: one pass that does not stop early
    // (the compiler makes it a vector loop), then one copy.
    let special = bytes.iter().fold(0_u8, |special, &b| {
        special | u8::from(b < 0x20 || b == b'"' || b == b'\\')
    });
    if special == 0 {
        out.extend_from_slice(bytes);
    } else {
        escaped(out, bytes);
    }
    out.push(b'"');
}

#[cold]
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..0x20 => 0,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short == 0 {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(short);
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::audit::record::{
        Agent, Host, Id, Image, ImageHash, KubernetesContainer, Parent, Pod, Rule, ThreadId,
        Vulnerability,
    };

    /// Strings that exercise every escape and none.
    const AWKWARD: &[&str] = &[
        "",
        "/usr/bin/wget",
        "quote \" and backslash \\",
        "newline\nreturn\rtab\tbackspace\u{8}formfeed\u{c}",
        "control \u{1}\u{1f} and delete \u{7f}",
        "non-ASCII é ü 中文 🦀",
        "\\\\\"\"",
        "ends with a control\u{0}",
    ];

    /// A small deterministic generator: the same records on every run.
    struct Picks(u64);

    impl Picks {
        fn next(&mut self) -> u64 {
            // xorshift64
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn yes(&mut self) -> bool {
            self.next() & 1 == 1
        }

        fn text(&mut self) -> String {
            let count = AWKWARD.len() as u64;
            AWKWARD[usize::try_from(self.next() % count).unwrap()].to_owned()
        }

        fn maybe(&mut self) -> Option<String> {
            self.yes().then(|| self.text())
        }

        fn word(&mut self, words: &[&'static str]) -> &'static str {
            words[usize::try_from(self.next() % words.len() as u64).unwrap()]
        }

        fn ancestor(&mut self) -> Ancestor {
            Ancestor {
                pid: u32::try_from(self.next() >> 33).unwrap(),
                name: self.text(),
                executable: self.maybe(),
            }
        }

        fn some<T>(&mut self, make: impl FnOnce(&mut Self) -> T) -> Option<T> {
            if self.yes() { Some(make(self)) } else { None }
        }

        fn list<T>(&mut self, make: impl Fn(&mut Self) -> T) -> Vec<T> {
            let len = self.next() % 4;
            (0..len).map(|_| make(self)).collect()
        }
    }

    fn record(p: &mut Picks) -> AuditRecord {
        AuditRecord {
            timestamp: p.text(),
            event: Event {
                kind: p.word(&["alert", "event"]),
                category: [p.word(&["process", "file"]), "intrusion_detection"],
                r#type: ["start", p.word(&["denied", "allowed"])],
                action: p.text(),
                outcome: p.word(&["failure", "success"]),
                reason: p.text(),
                module: "enforcer",
                dataset: "enforcer.audit",
            },
            rule: Rule {
                name: p.text(),
                category: p.word(&["drift", "vshield"]),
                ruleset: p.text(),
            },
            vulnerability: p.some(|p| Vulnerability {
                id: p.text(),
                enumeration: p.word(&["CVE", "GHSA"]),
            }),
            container: p.some(|p| Container {
                id: p.text(),
                runtime: p.word(&["podman", "containerd"]),
                name: p.maybe(),
                image: p.some(|p| Image {
                    name: p.text(),
                    tag: p.list(Picks::text),
                    hash: p.some(|p| ImageHash {
                        all: p.list(Picks::text),
                    }),
                }),
            }),
            kubernetes: p.some(|p| Kubernetes {
                namespace: p.maybe(),
                pod: Pod {
                    name: p.maybe(),
                    uid: p.maybe(),
                },
                labels: p.some(|p| {
                    p.list(|p| (p.text(), p.text()))
                        .into_iter()
                        .collect::<BTreeMap<_, _>>()
                }),
                container: p.some(|p| KubernetesContainer {
                    kind: p.word(&["init", "ephemeral"]),
                }),
            }),
            process: Process {
                pid: u32::MAX,
                thread: ThreadId { id: 0 },
                parent: Parent {
                    pid: 1,
                    name: p.maybe(),
                    executable: p.maybe(),
                },
                entry_leader: p.some(Picks::ancestor),
                name: p.text(),
                executable: p.maybe(),
            },
            file: File {
                path: p.maybe(),
                name: p.text(),
                inode: p.text(),
                device: p.text(),
                r#type: "file",
            },
            user: Id { id: p.text() },
            group: Id { id: p.text() },
            host: Host { hostname: p.text() },
            agent: Agent {
                r#type: "enforcer",
                version: "0.1.0",
            },
            enforcer: Enforcer {
                decision: p.word(&["blocked", "audit"]),
                reason: p.word(&["drift", "vshield"]),
                backend: p.word(&["lsm", "signal"]),
                via: p.word(&["exec", "mmap", "open"]),
                layer: p.yes().then_some("overlay-upper"),
                mount_namespace: u32::try_from(p.next() >> 32).unwrap(),
                cgroup_id: p.next(),
                lineage: p.list(Picks::ancestor),
                session: p.yes().then_some("exec"),
                exemption: p.yes().then_some("exec-session"),
                path_truncated: p.yes(),
                suppressed: if p.yes() { 0 } else { u32::MAX },
            },
        }
    }

    #[test]
    fn decisions_are_written_byte_for_byte_as_serde_writes_them() {
        let mut picks = Picks(0x9e37_79b9_7f4a_7c15);
        let mut ours = Vec::new();
        for _ in 0..5000 {
            let record = Record::Decision(record(&mut picks));
            ours.clear();
            write(&record, &mut ours).unwrap();
            let theirs = serde_json::to_vec(&record).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs),
                "{record:#?}"
            );
        }
    }

    #[test]
    fn every_string_escape_matches_serde() {
        for b in 0..=0x7f_u8 {
            let text = format!("a{}b", char::from(b));
            let mut ours = Vec::new();
            string(&mut ours, &text);
            assert_eq!(ours, serde_json::to_vec(&text).unwrap(), "byte {b:#x}");
        }
    }

    #[test]
    fn the_records_of_a_flood_are_written_as_serde_writes_them() {
        // The record the agent writes most: what the enricher makes of a
        // kernel event, not a hand-made one.
        let record = crate::audit::sink::tests::drift_record("/x/wget");
        let mut ours = Vec::new();
        write(&record, &mut ours).unwrap();
        assert_eq!(ours, serde_json::to_vec(&record).unwrap());
    }
}
