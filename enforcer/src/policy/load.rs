//! Reading policy files: paths (files, and directories of `*.yaml` /
//! `*.yml`), documents, checks. Every problem becomes a [`Diagnostic`] with
//! its file, line, column and field; all of them are collected, so one run
//! of `enforcer policy check` shows everything to fix.

use std::{
    collections::BTreeMap,
    fmt, fs,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;
use serde_saphyr::{Location, Spanned};

use super::{
    ContainerSelector, DriftRule, Mode, Policy, SelectedDrift,
    document::{
        API_VERSION, DocumentMode, DriftPolicyDocument, DriftPolicySpec, Header, Metadata,
        Operation, Selector, VShieldDocument,
    },
    paths,
    vshield::{Scope, VShield},
};
use enforcer_common::{DRIFT_SELECTED_MAX, vshield_op};

/// Larger policy files are refused before they are parsed.
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// One problem in the policy files. `line` and `column` start at 1; 0 means
/// the problem concerns the whole file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    /// Where in the document, as a path (`spec.allowedPaths[1]`); empty when
    /// the problem is not about one field.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Where a document came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    /// Line of the document's first line in the file.
    pub line: u64,
}

/// Every valid document of the files, by kind, in the order read.
#[derive(Debug, Default)]
pub struct PolicySet {
    pub drift: Vec<(Source, DriftPolicyDocument)>,
    pub vshields: Vec<(Source, VShieldDocument)>,
}

/// Reads and checks the policy files at `paths`.
///
/// # Errors
///
/// Every problem found, in file order.
pub fn load(paths: &[PathBuf]) -> Result<PolicySet, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut set = PolicySet::default();
    for file in expand(paths) {
        match file.and_then(|file| read(&file).map(|text| (file, text))) {
            Ok((file, text)) => parse_file(&file, &text, &mut set, &mut diagnostics),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    check_unique_names(&set, &mut diagnostics);
    if diagnostics.is_empty() {
        Ok(set)
    } else {
        Err(diagnostics)
    }
}

fn whole_file(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: 0,
        column: 0,
        field: String::new(),
        message,
    }
}

/// Files named by `paths`, in order: files as given, directories' `*.yaml`
/// and `*.yml` files, sorted by name.
fn expand(paths: &[PathBuf]) -> Vec<Result<PathBuf, Diagnostic>> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(Ok(path.clone()));
            continue;
        }
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(error) => {
                files.push(Err(whole_file(
                    path,
                    format!("reading the directory: {error}"),
                )));
                continue;
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|file| {
                file.is_file()
                    && file
                        .extension()
                        .is_some_and(|extension| extension == "yaml" || extension == "yml")
            })
            .collect();
        if found.is_empty() {
            files.push(Err(whole_file(
                path,
                "the directory has no *.yaml or *.yml files".to_owned(),
            )));
        }
        found.sort();
        files.extend(found.into_iter().map(Ok));
    }
    files
}

fn read(file: &Path) -> Result<String, Diagnostic> {
    let refuse = |message: String| whole_file(file, message);
    let size = fs::metadata(file)
        .map_err(|error| refuse(error.to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(refuse(format!(
            "the file has {size} bytes; policy files may have at most {MAX_FILE_BYTES}"
        )));
    }
    let bytes = fs::read(file).map_err(|error| refuse(error.to_string()))?;
    String::from_utf8(bytes).map_err(|error| {
        refuse(format!(
            "not UTF-8 text (invalid byte at offset {})",
            error.utf8_error().valid_up_to()
        ))
    })
}

/// One YAML document of a file: its text and the line it starts on.
struct Chunk<'a> {
    text: &'a str,
    first_line: u64,
}

/// Splits a YAML stream at its document markers (`---` and `...` at the
/// start of a line, which YAML reserves for that even inside block
/// scalars). Documents with nothing but comments and blank lines are left
/// out.
fn documents(text: &str) -> Vec<Chunk<'_>> {
    let is_marker = |line: &str| {
        ["---", "..."].iter().any(|marker| {
            line.strip_prefix(marker)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r']))
        })
    };
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_number = index as u64 + 1;
        if is_marker(line.trim_end_matches('\n')) {
            chunks.push(Chunk {
                text: &text[start..offset],
                first_line,
            });
            // The marker line itself may carry content (`--- key: value`),
            // which the next document keeps, blanked marker and all.
            start = offset + line.len();
            first_line = line_number + 1;
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        text: &text[start..],
        first_line,
    });
    chunks.retain(|chunk| {
        chunk
            .text
            .lines()
            .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
    });
    chunks
}

fn parse_file(file: &Path, text: &str, set: &mut PolicySet, diagnostics: &mut Vec<Diagnostic>) {
    let chunks = documents(text);
    if chunks.is_empty() {
        diagnostics.push(whole_file(
            file,
            "no policy documents in the file".to_owned(),
        ));
        return;
    }
    for chunk in chunks {
        let mut at = Place {
            file,
            first_line: chunk.first_line,
            diagnostics,
        };
        let Some(header) = at.parse::<Header>(chunk.text) else {
            continue;
        };
        let source = Source {
            file: file.to_owned(),
            line: chunk.first_line,
        };
        match header.api_version {
            Some(version) if version.value == API_VERSION => {}
            Some(version) => at.error(
                version.referenced,
                "apiVersion",
                format!(
                    "unknown apiVersion {:?}; expected {API_VERSION:?}",
                    version.value
                ),
            ),
            None => at.error_at_start("apiVersion", format!("missing; expected {API_VERSION:?}")),
        }
        match header.kind {
            None => at.error_at_start(
                "kind",
                "missing; expected DriftPolicy or VShield".to_owned(),
            ),
            Some(kind) => match kind.value.as_str() {
                "DriftPolicy" => {
                    if let Some(document) = at.parse::<DriftPolicyDocument>(chunk.text) {
                        check_drift(&document, &mut at);
                        set.drift.push((source, document));
                    }
                }
                "VShield" => {
                    if let Some(document) = at.parse::<VShieldDocument>(chunk.text) {
                        check_vshield(&document, &mut at);
                        set.vshields.push((source, document));
                    }
                }
                other => at.error(
                    kind.referenced,
                    "kind",
                    format!("unknown kind {other:?}; expected DriftPolicy or VShield"),
                ),
            },
        }
    }
}

/// Where diagnostics of one document go, with its position in the file.
struct Place<'a> {
    file: &'a Path,
    first_line: u64,
    diagnostics: &'a mut Vec<Diagnostic>,
}

impl Place<'_> {
    fn parse<T: DeserializeOwned>(&mut self, text: &str) -> Option<T> {
        // The default options keep a budget on events and alias expansion,
        // which stops documents that expand exponentially.
        let mut field = String::new();
        let parsed = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                field = error.path().to_string();
                error.into_inner()
            })
        });
        match parsed {
            Ok(value) => Some(value),
            Err(error) => {
                let location = error.location().unwrap_or(Location::UNKNOWN);
                let message = error.without_snippet().to_string();
                // The place is printed in front, relative to the file.
                let message = match message.split_once(" at line ") {
                    Some((message, _)) => message.to_owned(),
                    None => message,
                };
                let field = if field == "." { String::new() } else { field };
                self.error(location, &field, message);
                None
            }
        }
    }

    fn error(&mut self, location: Location, field: &str, message: String) {
        let known = location != Location::UNKNOWN;
        self.diagnostics.push(Diagnostic {
            file: self.file.to_owned(),
            line: if known {
                self.first_line + location.line() - 1
            } else {
                self.first_line
            },
            column: if known { location.column() } else { 1 },
            field: field.to_owned(),
            message,
        });
    }

    fn error_at_start(&mut self, field: &str, message: String) {
        self.error(Location::UNKNOWN, field, message);
    }
}

fn check_metadata(metadata: &Metadata, at: &mut Place<'_>) {
    let name = &metadata.name;
    if let Err(reason) = check_name(&name.value) {
        at.error(name.referenced, "metadata.name", reason);
    }
}

/// Kubernetes' DNS label rule: names go into events and metrics.
fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: lowercase letters, digits and '-', at most 63, starting and \
             ending with a letter or digit"
        ))
    }
}

fn check_selector(selector: &Selector, at: &mut Place<'_>) {
    if selector.host && container_selector(selector).is_some() {
        at.error_at_start(
            "spec.selector.host",
            "the host cannot be combined with images, namespaces, podLabels or containerKinds, which \
             select containers"
                .to_owned(),
        );
    }
    for (field, globs) in [
        ("images", &selector.images),
        ("namespaces", &selector.namespaces),
    ] {
        for (index, glob) in globs.iter().enumerate() {
            if let Err(error) = globset::Glob::new(&glob.value) {
                at.error(
                    glob.referenced,
                    &format!("spec.selector.{field}[{index}]"),
                    format!("{:?} is not a valid glob: {}", glob.value, error.kind()),
                );
            }
        }
    }
    for (key, value) in &selector.pod_labels {
        if let Err(reason) = check_label(key, value) {
            // A label the API server would refuse never matches a pod.
            at.error_at_start(&format!("spec.selector.podLabels.{key}"), reason);
        }
    }
}

/// A Kubernetes label name: at most 63 characters, alphanumeric at both
/// ends, `-`, `_` and `.` between. Empty is allowed for values only.
fn label_name_ok(name: &str) -> bool {
    let bytes = name.as_bytes();
    name.len() <= 63
        && bytes
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric)
}

/// Kubernetes' rules for a label (`[PREFIX/]NAME: VALUE`, the prefix a DNS
/// subdomain of at most 253 characters).
fn check_label(key: &str, value: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|prefix| {
        !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part.bytes().all(|byte| {
                        byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-'
                    })
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    if !prefix_ok || name.is_empty() || !label_name_ok(name) {
        return Err(format!(
            "{key:?} is not a Kubernetes label key: an optional DNS subdomain prefix and '/', then at most 63 \
             letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    if !label_name_ok(value) {
        return Err(format!(
            "{value:?} is not a Kubernetes label value: at most 63 letters, digits, '-', '_' or '.', starting \
             and ending with a letter or digit (or empty)"
        ));
    }
    Ok(())
}

fn check_drift(document: &DriftPolicyDocument, at: &mut Place<'_>) {
    check_metadata(&document.metadata, at);
    check_selector(&document.spec.selector, at);
    if document.spec.selector.host {
        at.error_at_start(
            "spec.selector.host",
            "drift rules never apply to the host's own processes: a DriftPolicy selects containers"
                .to_owned(),
        );
    }
    for (index, glob) in document.spec.allowed_paths.iter().enumerate() {
        // The same compiler the agent runs, one glob at a time, so that the
        // error points at the glob.
        if let Err(error) = paths::compile(std::slice::from_ref(&glob.value)) {
            at.error(
                glob.referenced,
                &format!("spec.allowedPaths[{index}]"),
                error.to_string(),
            );
        }
    }
}

fn check_vshield(document: &VShieldDocument, at: &mut Place<'_>) {
    check_metadata(&document.metadata, at);
    let spec = &document.spec;
    check_selector(&spec.selector, at);
    if let Err(reason) = check_vulnerability(&spec.vulnerability.value) {
        at.error(spec.vulnerability.referenced, "spec.vulnerability", reason);
    }
    if spec.files.value.is_empty() {
        at.error(
            spec.files.referenced,
            "spec.files",
            "empty: name the vulnerable files".to_owned(),
        );
    }
    for (index, file) in spec.files.value.iter().enumerate() {
        let field = format!("spec.files[{index}]");
        if !file.value.starts_with('/') {
            at.error(
                file.referenced,
                &field,
                format!(
                    "{:?} is not absolute: files are named by their path in the container",
                    file.value
                ),
            );
        } else if braces_cross_components(&file.value) {
            at.error(
                file.referenced,
                &field,
                format!(
                    "{:?}: alternatives {{a,b}} must stay within one path component",
                    file.value
                ),
            );
        } else if let Err(error) = globset::Glob::new(&file.value) {
            at.error(
                file.referenced,
                &field,
                format!("{:?} is not a valid glob: {}", file.value, error.kind()),
            );
        }
    }
}

/// Whether a `{...}` group of `glob` contains a `/`.
fn braces_cross_components(glob: &str) -> bool {
    let mut depth = 0u32;
    for c in glob.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '/' if depth > 0 => return true,
            _ => {}
        }
    }
    false
}

/// `CVE-YYYY-NNNN` (four or more digits) or `GHSA-xxxx-xxxx-xxxx`.
fn check_vulnerability(id: &str) -> Result<(), String> {
    let cve = id
        .strip_prefix("CVE-")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(year, number)| {
            year.len() == 4
                && year.bytes().all(|byte| byte.is_ascii_digit())
                && number.len() >= 4
                && number.bytes().all(|byte| byte.is_ascii_digit())
        });
    let ghsa = id.strip_prefix("GHSA-").is_some_and(|rest| {
        let parts: Vec<&str> = rest.split('-').collect();
        parts.len() == 3
            && parts.iter().all(|part| {
                part.len() == 4
                    && part
                        .bytes()
                        .all(|byte| byte.is_ascii_digit() || byte.is_ascii_lowercase())
            })
    });
    if cve || ghsa {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a vulnerability id: expected CVE-YYYY-NNNN or GHSA-xxxx-xxxx-xxxx"
        ))
    }
}

/// Names are unique per kind across all files: they identify a policy in
/// events, `enforcer vshield list` and reloads.
fn check_unique_names(set: &PolicySet, diagnostics: &mut Vec<Diagnostic>) {
    let mut check = |kind: &str, entries: Vec<(&Source, &Spanned<String>)>| {
        let mut first: BTreeMap<&str, &Source> = BTreeMap::new();
        for (source, name) in entries {
            if let Some(earlier) = first.get(name.value.as_str()) {
                diagnostics.push(Diagnostic {
                    file: source.file.clone(),
                    line: source.line + name.referenced.line() - 1,
                    column: name.referenced.column(),
                    field: "metadata.name".to_owned(),
                    message: format!(
                        "a {kind} named {:?} is already defined at {}:{}",
                        name.value,
                        earlier.file.display(),
                        earlier.line
                    ),
                });
            } else {
                first.insert(&name.value, source);
            }
        }
    };
    check(
        "DriftPolicy",
        set.drift
            .iter()
            .map(|(source, document)| (source, &document.metadata.name))
            .collect(),
    );
    check(
        "VShield",
        set.vshields
            .iter()
            .map(|(source, document)| (source, &document.metadata.name))
            .collect(),
    );
}

/// The containers `selector` picks by image, namespace, pod labels and
/// container kind;
/// `None` when it names none of them (every container, or the host).
fn container_selector(selector: &Selector) -> Option<ContainerSelector> {
    if selector.images.is_empty()
        && selector.namespaces.is_empty()
        && selector.pod_labels.is_empty()
        && selector.container_kinds.is_empty()
    {
        return None;
    }
    let globs = |globs: &[Spanned<String>]| -> Vec<String> {
        globs.iter().map(|glob| glob.value.clone()).collect()
    };
    Some(ContainerSelector {
        images: globs(&selector.images),
        namespaces: globs(&selector.namespaces),
        pod_labels: selector.pod_labels.clone(),
        container_kinds: selector.container_kinds.iter().copied().collect(),
    })
}

fn drift_rule(spec: &DriftPolicySpec) -> DriftRule {
    DriftRule {
        mode: match spec.mode {
            Some(DocumentMode::Audit) => Mode::Audit,
            Some(DocumentMode::Enforce) | None => Mode::Enforce,
        },
        allow_memfd: spec.allow_memfd,
        allow_writable_mounts: spec.allow_writable_mounts,
        audit_exec_sessions: spec.audit_exec_sessions,
        allowed_paths: spec
            .allowed_paths
            .iter()
            .map(|glob| glob.value.clone())
            .collect(),
    }
}

/// The vShields `enforcer run` enforces.
fn agent_vshields(set: &PolicySet) -> Vec<VShield> {
    let mut vshields = Vec::new();
    for document in set.vshields.iter().map(|(_, document)| document) {
        let spec = &document.spec;
        let selector = &spec.selector;
        let ops = if spec.operations.is_empty() {
            vshield_op::EXEC | vshield_op::OPEN | vshield_op::LOAD
        } else {
            spec.operations.iter().fold(0, |ops, operation| {
                ops | match operation {
                    Operation::Exec => vshield_op::EXEC,
                    Operation::Open => vshield_op::OPEN,
                    Operation::Load => vshield_op::LOAD,
                }
            })
        };
        vshields.push(VShield {
            name: document.metadata.name.value.clone(),
            vulnerability: spec.vulnerability.value.clone(),
            mode: match spec.mode {
                Some(DocumentMode::Enforce) => Mode::Enforce,
                Some(DocumentMode::Audit) | None => Mode::Audit,
            },
            ops,
            files: spec
                .files
                .value
                .iter()
                .map(|file| file.value.clone())
                .collect(),
            scope: if selector.host {
                Scope::Host
            } else {
                container_selector(selector).map_or(Scope::Containers, Scope::Selected)
            },
        });
    }
    vshields
}

/// Reads and checks the policy files at `paths` and builds the policy the
/// agent enforces: what `enforcer run --policy` starts with and what a
/// reload replaces it with.
///
/// # Errors
///
/// Every problem in the files, each at its place.
pub fn agent_policy_at(paths: &[PathBuf]) -> Result<Policy, Vec<Diagnostic>> {
    load(paths).and_then(|set| agent_policy(&set))
}

/// The policy `enforcer run` enforces from checked files. What the agent
/// cannot enforce yet is refused with a diagnostic rather than ignored: a
/// vShield or a selector that silently did nothing would be worse than an
/// agent that does not start.
///
/// # Errors
///
/// The documents it cannot enforce, each at its place.
pub fn agent_policy(set: &PolicySet) -> Result<Policy, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let at = |source: &Source, field: &str, message: String| Diagnostic {
        file: source.file.clone(),
        line: source.line,
        column: 1,
        field: field.to_owned(),
        message,
    };
    let vshields = agent_vshields(set);
    let mut every_container: Option<(&Source, &DriftPolicyDocument)> = None;
    let mut selected_drift = Vec::new();
    for (source, document) in &set.drift {
        if let Some(selector) = container_selector(&document.spec.selector) {
            if selected_drift.len() == DRIFT_SELECTED_MAX as usize {
                diagnostics.push(at(
                    source,
                    "spec.selector",
                    format!(
                        "more than {DRIFT_SELECTED_MAX} DriftPolicies with a selector (the kernel map's room)"
                    ),
                ));
            }
            selected_drift.push(SelectedDrift {
                name: document.metadata.name.value.clone(),
                selector,
                rule: drift_rule(&document.spec),
            });
        } else if let Some((first, _)) = every_container {
            diagnostics.push(at(
                source,
                "spec.selector",
                format!(
                    "a second DriftPolicy for every container; the first is at {}:{}",
                    first.file.display(),
                    first.line
                ),
            ));
        } else {
            every_container = Some((source, document));
        }
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    let mut policy = match every_container {
        None => Policy::builtin(DriftRule::strict(Mode::Enforce)),
        Some((_, document)) => Policy {
            name: document.metadata.name.value.clone(),
            drift: drift_rule(&document.spec),
            selected_drift: Vec::new(),
            vshields: Vec::new(),
        },
    };
    policy.selected_drift = selected_drift;
    policy.vshields = vshields;
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{container::kubernetes::ContainerKind, policy::document::Operation};

    /// A fresh directory under the system's temporary directory.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "enforcer-policy-test-{}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let file = dir.join(name);
        fs::write(&file, text).unwrap();
        file
    }

    fn problems(paths: &[PathBuf]) -> Vec<String> {
        load(paths)
            .expect_err("the files have problems")
            .iter()
            .map(|diagnostic| {
                let text = diagnostic.to_string();
                let file = diagnostic.file.display().to_string();
                text.strip_prefix(&file).unwrap_or(&text).to_owned()
            })
            .collect()
    }

    const DRIFT: &str = "apiVersion: enforcer.dev/v1alpha1
kind: DriftPolicy
metadata:
  name: default
spec:
  allowedPaths: [\"/opt/plugins/*.so\"]
";

    const VSHIELD: &str = "apiVersion: enforcer.dev/v1alpha1
kind: VShield
metadata:
  name: log4shell
spec:
  vulnerability: CVE-2021-44228
  mode: enforce
  files: [/app/lib/log4j-core-2.14.1.jar]
  operations: [open, load]
";

    #[test]
    fn pod_label_selectors_follow_kubernetes_label_syntax() {
        for (key, value) in [
            ("app", "web"),
            ("app.kubernetes.io/name", "shop-api"),
            ("example.com/tier", ""),
            ("a", "1.2_3-x"),
        ] {
            assert_eq!(check_label(key, value), Ok(()), "{key}: {value}");
        }
        let dir = scratch("labels");
        let bad = load(&[write(
            &dir,
            "l.yaml",
            &VSHIELD.replace(
                "spec:\n",
                "spec:\n  selector: {podLabels: {app: \"-web\"}}\n",
            ),
        )])
        .expect_err("a bad label value");
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].field, "spec.selector.podLabels.app");
        assert!(
            bad[0].message.contains("not a Kubernetes label value"),
            "{bad:?}"
        );
        for (key, value) in [
            ("", "x"),
            ("-app", "x"),
            ("app/", "x"),
            ("Example.com/app", "x"),
            (&"k".repeat(64), "x"),
            ("app", "has space"),
            ("app", "-x"),
            ("app", &"v".repeat(64)),
        ] {
            assert!(check_label(key, value).is_err(), "{key}: {value}");
        }
    }

    #[test]
    fn reads_several_documents_per_file_and_directories() {
        let dir = scratch("valid");
        write(
            &dir,
            "a.yaml",
            &format!("# two documents\n---\n{DRIFT}---\n{VSHIELD}...\n"),
        );
        write(&dir, "notes.txt", "not a policy");
        let set = load(&[dir]).expect("valid");
        assert_eq!(set.drift.len(), 1);
        assert_eq!(set.vshields.len(), 1);
        let (source, vshield) = &set.vshields[0];
        assert_eq!(source.line, 10);
        assert_eq!(vshield.spec.vulnerability.value, "CVE-2021-44228");
        assert_eq!(vshield.spec.operations, [Operation::Open, Operation::Load]);
        assert_eq!(
            set.drift[0].1.spec.allowed_paths[0].value,
            "/opt/plugins/*.so"
        );
    }

    #[test]
    fn document_markers_only_count_at_the_start_of_a_line() {
        let text = "a: |\n  text\n  ---\n  more\n---\nb: 1\n";
        let chunks = documents(text);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].text, "a: |\n  text\n  ---\n  more\n");
        assert_eq!((chunks[1].text, chunks[1].first_line), ("b: 1\n", 6));
    }

    #[test]
    fn malformed_yaml_is_placed() {
        let dir = scratch("malformed");
        let file = write(
            &dir,
            "p.yaml",
            &format!("{DRIFT}---\nkind: DriftPolicy\nspec: [1, 2\n"),
        );
        let problems = problems(&[file]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(":9:") || problems[0].starts_with(":10:"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_fields_and_wrong_types_name_the_field() {
        let dir = scratch("fields");
        let file = write(
            &dir,
            "p.yaml",
            &format!(
                "{}  allowMemfd: sometimes\n---\n{}",
                DRIFT,
                VSHIELD.replace("  mode: enforce\n", "  mode: enforce\n  colour: blue\n")
            ),
        );
        let problems = problems(&[file]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with(":7:15: spec.allowMemfd: "),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with(":16:3: spec.colour: unknown field `colour`"),
            "{problems:?}"
        );
    }

    #[test]
    fn checks_values_where_they_are() {
        let dir = scratch("values");
        let file = write(
            &dir,
            "p.yaml",
            &DRIFT
                .replace("name: default", "name: Not_A_Name")
                .replace("[\"/opt/plugins/*.so\"]", "[\"/ok/**\", \"relative/*\"]"),
        );
        let vshield = write(
            &dir,
            "v.yaml",
            &VSHIELD
                .replace("CVE-2021-44228", "CVE-21-1")
                .replace("[/app/lib/log4j-core-2.14.1.jar]", "[lib/x.jar, \"/a/[b\"]"),
        );
        assert_eq!(
            problems(&[file, vshield]),
            [
                ":4:9: metadata.name: \"Not_A_Name\" is not a valid name: lowercase letters, digits and '-', \
                 at most 63, starting and ending with a letter or digit",
                ":6:28: spec.allowedPaths[1]: allowed path \"relative/*\" is not absolute: a file's path in its \
                 container starts with /",
                ":6:18: spec.vulnerability: \"CVE-21-1\" is not a vulnerability id: expected CVE-YYYY-NNNN or \
                 GHSA-xxxx-xxxx-xxxx",
                ":8:11: spec.files[0]: \"lib/x.jar\" is not absolute: files are named by their path in the \
                 container",
                ":8:22: spec.files[1]: \"/a/[b\" is not a valid glob: unclosed character class; missing ']'",
            ]
        );
    }

    #[test]
    fn empty_missing_huge_and_unknown_files_are_refused() {
        let dir = scratch("files");
        let empty = write(&dir, "empty.yaml", "");
        let comments = write(&dir, "comments.yaml", "# nothing here\n---\n\n");
        let huge = dir.join("huge.yaml");
        fs::write(
            &huge,
            vec![b'#'; usize::try_from(MAX_FILE_BYTES).unwrap() + 1],
        )
        .unwrap();
        let binary = write(&dir, "binary.yaml", "");
        fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let empty_dir = dir.join("nothing");
        fs::create_dir(&empty_dir).unwrap();
        let problems = problems(&[
            empty,
            comments,
            huge,
            binary,
            dir.join("missing.yaml"),
            empty_dir,
        ]);
        assert_eq!(problems.len(), 6, "{problems:?}");
        assert_eq!(problems[0], ": no policy documents in the file");
        assert_eq!(problems[1], ": no policy documents in the file");
        assert!(
            problems[2].contains("policy files may have at most"),
            "{problems:?}"
        );
        assert!(problems[3].contains("not UTF-8"), "{problems:?}");
        assert!(problems[4].contains("No such file"), "{problems:?}");
        assert!(
            problems[5].contains("no *.yaml or *.yml files"),
            "{problems:?}"
        );
    }

    #[test]
    fn names_are_unique_per_kind_across_files() {
        let dir = scratch("names");
        let first = write(&dir, "a.yaml", DRIFT);
        let second = write(&dir, "b.yaml", &format!("{VSHIELD}---\n{DRIFT}"));
        let problems = problems(&[first.clone(), second]);
        assert_eq!(
            problems,
            [format!(
                ":14:9: metadata.name: a DriftPolicy named \"default\" is already defined at {}:1",
                first.display()
            )]
        );
    }

    #[test]
    fn exponential_aliases_are_stopped() {
        let dir = scratch("aliases");
        // Ten to the eleventh nodes if expanded, inside a field that is read.
        let mut lines: Vec<String> = DRIFT.lines().take(4).map(str::to_owned).collect();
        lines.push("  labels:".to_owned());
        lines.push("    a0: &a0 [x, x, x, x, x, x, x, x, x, x]".to_owned());
        for level in 1..12 {
            let alias = format!("*a{}", level - 1);
            lines.push(format!(
                "    a{level}: &a{level} [{}]",
                [alias.as_str(); 10].join(", ")
            ));
        }
        let file = write(&dir, "bomb.yaml", &lines.join("\n"));
        let problems = problems(&[file]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("budget breached"), "{problems:?}");
    }

    #[test]
    fn the_agent_enforces_one_drift_policy_for_every_container() {
        let dir = scratch("agent");
        let none = load(&[write(&dir, "v.yaml", VSHIELD)]).expect("valid");
        let one = load(&[write(
            &dir,
            "d.yaml",
            &DRIFT.replace(
                "spec:\n",
                "spec:\n  mode: audit\n  allowMemfd: true\n  auditExecSessions: true\n",
            ),
        )])
        .expect("valid");
        let policy = agent_policy(&one).expect("enforceable");
        assert_eq!(policy.name, "default");
        assert_eq!(
            policy.drift,
            DriftRule {
                mode: Mode::Audit,
                allow_memfd: true,
                allow_writable_mounts: false,
                allowed_paths: vec!["/opt/plugins/*.so".to_owned()],
                audit_exec_sessions: true,
            }
        );
        // Without a DriftPolicy: the built-in one.
        let builtin = PolicySet::default();
        assert_eq!(
            agent_policy(&builtin).expect("enforceable"),
            Policy::builtin(DriftRule::strict(Mode::Enforce))
        );
        // What it cannot enforce yet is refused, each at its place.
        let refused = |set: &PolicySet| -> Vec<String> {
            agent_policy(set)
                .expect_err("not enforceable yet")
                .iter()
                .map(|diagnostic| format!("{}: {}", diagnostic.line, diagnostic.field))
                .collect()
        };
        let shields = agent_policy(&none).expect("enforceable").vshields;
        assert_eq!(shields.len(), 1);
        assert_eq!(shields[0].scope, Scope::Containers);
        assert_eq!(shields[0].mode, Mode::Enforce);
        assert_eq!(shields[0].ops, vshield_op::OPEN | vshield_op::LOAD);
        let by_image = load(&[write(
            &dir,
            "vi.yaml",
            &VSHIELD.replace("spec:\n", "spec:\n  selector: {images: [nginx:*]}\n"),
        )])
        .expect("valid");
        assert_eq!(
            agent_policy(&by_image).expect("enforceable").vshields[0].scope,
            Scope::Selected(ContainerSelector::images(&["nginx:*"]))
        );
        let by_namespace = load(&[write(
            &dir,
            "vn.yaml",
            &VSHIELD.replace(
                "spec:\n",
                "spec:\n  selector: {namespaces: [ci-*], podLabels: {app: web}}\n",
            ),
        )])
        .expect("valid");
        assert_eq!(
            agent_policy(&by_namespace).expect("enforceable").vshields[0].scope,
            Scope::Selected(ContainerSelector {
                namespaces: vec!["ci-*".to_owned()],
                pod_labels: [("app".to_owned(), "web".to_owned())].into(),
                ..ContainerSelector::default()
            })
        );
        let by_kind = load(&[write(
            &dir,
            "vk.yaml",
            &VSHIELD.replace(
                "spec:\n",
                "spec:\n  selector: {containerKinds: [init, ephemeral]}\n",
            ),
        )])
        .expect("valid");
        assert_eq!(
            agent_policy(&by_kind).expect("enforceable").vshields[0].scope,
            Scope::Selected(ContainerSelector {
                container_kinds: [ContainerKind::Init, ContainerKind::Ephemeral].into(),
                ..ContainerSelector::default()
            })
        );
        let bad_kind = load(&[write(
            &dir,
            "vb.yaml",
            &VSHIELD.replace(
                "spec:\n",
                "spec:\n  selector: {containerKinds: [sidecar]}\n",
            ),
        )])
        .expect_err("an unknown kind");
        assert!(
            bad_kind[0].message.contains("sidecar"),
            "the error names the value: {bad_kind:?}"
        );
        let selected = load(&[write(
            &dir,
            "s.yaml",
            &format!(
                "{DRIFT}---\n{}",
                DRIFT
                    .replace("name: default", "name: second")
                    .replace("spec:\n", "spec:\n  selector: {images: [nginx:*]}\n")
            ),
        )])
        .expect("valid");
        let policy = agent_policy(&selected).expect("enforceable");
        assert_eq!(policy.name, "default");
        assert_eq!(policy.selected_drift.len(), 1);
        assert_eq!(policy.selected_drift[0].name, "second");
        assert_eq!(
            policy.selected_drift[0].selector,
            ContainerSelector::images(&["nginx:*"])
        );
        let twice = load(&[write(
            &dir,
            "t.yaml",
            &format!(
                "{DRIFT}---\n{}",
                DRIFT.replace("name: default", "name: second")
            ),
        )])
        .expect("valid");
        assert_eq!(refused(&twice), ["8: spec.selector"]);
    }
}
