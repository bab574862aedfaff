//! Policy files: Kubernetes-shaped YAML documents (`apiVersion`, `kind`,
//! `metadata`, `spec`), as users write them. Values whose errors need a
//! place in the file are kept [`Spanned`]; the JSON Schema for editors is
//! generated from these same types (`enforcer policy schema`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::container::kubernetes::ContainerKind;

/// The `apiVersion` every document carries.
pub const API_VERSION: &str = "enforcer.dev/v1alpha1";

/// What every document starts with; read first to pick the `spec` type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Header {
    pub(crate) api_version: Option<Spanned<String>>,
    pub(crate) kind: Option<Spanned<String>>,
    #[expect(dead_code, reason = "read with the spec, in the second pass")]
    pub(crate) metadata: Option<serde::de::IgnoredAny>,
    #[expect(dead_code, reason = "read with the spec, in the second pass")]
    pub(crate) spec: Option<serde::de::IgnoredAny>,
}

/// A policy document: one of the kinds below.
#[derive(Debug, JsonSchema)]
#[schemars(title = "enforcer policy document")]
#[serde(tag = "kind")]
pub enum Document {
    /// What containers may run that is not from their image.
    DriftPolicy(DriftPolicyDocument),
    /// A virtual patch for one vulnerability.
    VShield(VShieldDocument),
}

pub type DriftPolicyDocument = KindDocument<DriftPolicySpec>;
pub type VShieldDocument = KindDocument<VShieldSpec>;

/// A document of a known kind: `kind` picked the type of `spec`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KindDocument<Spec> {
    /// Always `enforcer.dev/v1alpha1`.
    #[schemars(with = "String")]
    pub api_version: Spanned<String>,
    /// Read by the header pass; the schema states it through the tag.
    #[schemars(skip)]
    #[expect(dead_code, reason = "the header pass reads it")]
    kind: Option<serde::de::IgnoredAny>,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    /// Unique among the documents of one kind: lowercase letters, digits and
    /// `-`, at most 63 characters, starting and ending with a letter or
    /// digit.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Free-form labels, kept with the policy and shown in events.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `enforce` blocks and reports; `audit` only reports.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum DocumentMode {
    Enforce,
    Audit,
}

/// Which processes a document applies to. Empty: every container.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// The host's own processes instead of containers.
    #[serde(default)]
    pub host: bool,
    /// Container images, as globs over `name:tag` or `name@digest`
    /// (`docker.io/library/nginx:*`, `*@sha256:3f1c...`). Any matches.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub images: Vec<Spanned<String>>,
    /// Kubernetes namespaces (globs). Any matches.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub namespaces: Vec<Spanned<String>>,
    /// Kubernetes pod labels that must all be present with these values.
    #[serde(default)]
    pub pod_labels: BTreeMap<String, String>,
    /// How the container came to be in its pod: `regular`, `init`
    /// (`initContainers`) or `ephemeral` (`kubectl debug`). Any matches.
    /// Known from the Kubernetes API (`--kubernetes-node`).
    #[serde(default)]
    pub container_kinds: Vec<ContainerKind>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DriftPolicySpec {
    #[serde(default)]
    pub selector: Selector,
    /// Default: `enforce`.
    pub mode: Option<DocumentMode>,
    /// Paths in the container (globs: `*`, `?`, `[...]` within a component,
    /// `**` across components, `{a,b}`) whose drift files may run.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub allowed_paths: Vec<Spanned<String>>,
    /// Allow executing memfd files (`fexecve`).
    #[serde(default)]
    pub allow_memfd: bool,
    /// Allow executables on writable mounts other than the root filesystem.
    #[serde(default)]
    pub allow_writable_mounts: bool,
    /// Audit, not block, drift in exec sessions (`kubectl exec`, `podman
    /// exec`): processes under one that entered the running container from
    /// outside. Decided in the kernel when the file is about to run.
    #[serde(default)]
    pub audit_exec_sessions: bool,
}

/// What a vShield stops the vulnerable files from doing.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Operation {
    /// `execve` of the file (also as a script).
    Exec,
    /// `open` for reading or writing.
    Open,
    /// An executable mapping: loading it as a library.
    Load,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VShieldSpec {
    /// The vulnerability: `CVE-YYYY-NNNN` or `GHSA-xxxx-xxxx-xxxx`.
    #[schemars(with = "String")]
    pub vulnerability: Spanned<String>,
    #[serde(default)]
    pub selector: Selector,
    /// Default: `audit`.
    pub mode: Option<DocumentMode>,
    /// The vulnerable files, as absolute paths or globs in the container.
    #[schemars(with = "Vec<String>")]
    pub files: Spanned<Vec<Spanned<String>>>,
    /// Default: all three.
    #[serde(default)]
    pub operations: Vec<Operation>,
}
