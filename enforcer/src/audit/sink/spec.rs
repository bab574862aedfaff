//! Which sinks the agent writes to, from `--sink` or the config file's
//! `sink:` list. Both go through one deserializer, so a sink's options are
//! spelled and checked the same way in both places.
//!
//! On the command line a sink is `KIND[:TARGET][,KEY=VALUE]...`: the target
//! is the kind's main option (`file:PATH`, `syslog:ADDRESS`, `webhook:URL`);
//! each `KEY=VALUE` is an option as the config file spells it, its value read
//! as a YAML scalar (`keep=5` is a number, `max-size=100MiB` a size).

use std::{fmt::Write as _, sync::Arc};

use serde::Deserialize;

use super::{
    JsonLines, Sink, SinkError,
    file::{FileConfig, RotatingFile},
    syslog::{Syslog, SyslogConfig},
    webhook::{Webhook, WebhookConfig, WebhookCounters},
};
use crate::audit::format::Format;

/// One sink and its options.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SinkSpec {
    /// JSON lines on the agent's standard output.
    Stdout {
        #[serde(default)]
        format: Format,
    },
    /// JSON lines in a file, rotated by size.
    File(FileConfig),
    /// RFC 5424 messages to a syslog daemon.
    Syslog(SyslogConfig),
    /// Batches of records sent to an HTTP endpoint (`POST`).
    Webhook(WebhookConfig),
}

impl SinkSpec {
    /// What `--sink` names when not given.
    pub const fn default_stdout() -> Self {
        Self::Stdout {
            format: Format::Ecs,
        }
    }
}

/// An open sink, and its counters when it keeps its own.
pub struct Opened {
    pub sink: Box<dyn Sink>,
    pub webhook: Option<Arc<WebhookCounters>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("webhook", &self.webhook)
            .finish_non_exhaustive()
    }
}

/// Opens the sink `spec` names.
pub fn open(spec: &SinkSpec) -> Result<Opened, SinkError> {
    let plain = |sink: Box<dyn Sink>| Opened {
        sink,
        webhook: None,
    };
    Ok(match spec {
        SinkSpec::Stdout { format } => plain(Box::new(JsonLines::stdout(*format))),
        SinkSpec::File(config) => plain(Box::new(RotatingFile::open(config.clone())?)),
        SinkSpec::Syslog(config) => plain(Box::new(Syslog::connect(config.clone())?)),
        SinkSpec::Webhook(config) => {
            let webhook = Webhook::start(config.clone())?;
            Opened {
                webhook: Some(webhook.stats()),
                sink: Box::new(webhook),
            }
        }
    })
}

/// Parses a `--sink` value.
pub fn parse(spec: &str) -> Result<SinkSpec, String> {
    let (head, options) = spec.split_once(',').unwrap_or((spec, ""));
    let (kind, target) = match head.split_once(':') {
        Some((kind, target)) => (kind, Some(target)),
        None => (head, None),
    };
    let main = match kind {
        "stdout" | "file" | "syslog" | "webhook" => target_key(kind),
        other => {
            return Err(format!(
                "unknown sink kind `{other}` (stdout, file, syslog, webhook)"
            ));
        }
    };
    let mut yaml = String::new();
    match (main, target) {
        (Some(key), Some(target)) => {
            let _ = writeln!(yaml, "{key}: {}", quoted(target));
        }
        (None, Some(_)) => return Err(format!("`{kind}` takes no target after `:`")),
        // `syslog` alone is the local daemon's socket.
        (Some(_), None) if kind == "syslog" => {}
        (Some(key), None) => {
            return Err(format!(
                "`{kind}` needs its {key}: `{kind}:{}`",
                key.to_uppercase()
            ));
        }
        (None, None) => {}
    }
    for option in options.split(',').filter(|option| !option.is_empty()) {
        let Some((key, value)) = option.split_once('=') else {
            return Err(format!("`{option}` is not KEY=VALUE"));
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("`{key}` is not an option name"));
        }
        // A flow-style value would smuggle structure in; scalars only.
        if value.starts_with(['[', '{', '&', '*', '!', '|', '>']) {
            return Err(format!("`{key}`: only plain values can be given here"));
        }
        let _ = writeln!(yaml, "{key}: {value}");
    }
    if yaml.is_empty() {
        yaml.push_str("{}");
    }
    match kind {
        "stdout" => options_of(&yaml).map(|Stdout { format }| SinkSpec::Stdout { format }),
        "file" => options_of(&yaml).map(SinkSpec::File),
        "syslog" => options_of(&yaml).map(SinkSpec::Syslog),
        _ => options_of(&yaml).map(SinkSpec::Webhook),
    }
}

/// The options of a stdout sink.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stdout {
    #[serde(default)]
    format: Format,
}

/// Deserializes one kind's options, naming the option a problem is in.
fn options_of<T: serde::de::DeserializeOwned>(yaml: &str) -> Result<T, String> {
    let mut field = String::new();
    serde_saphyr::with_deserializer_from_str(yaml, |deserializer| {
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            field = error.path().to_string();
            error.into_inner()
        })
    })
    .map_err(|error| {
        // The line and column are of the YAML made up here: not useful.
        let message = error.without_snippet().to_string();
        let message = message
            .split_once(" at line ")
            .map_or(message.as_str(), |(m, _)| m);
        if field == "." || field.is_empty() {
            message.to_owned()
        } else {
            format!("`{field}`: {message}")
        }
    })
}

/// The option a sink kind's `:TARGET` sets.
pub fn target_key(kind: &str) -> Option<&'static str> {
    match kind {
        "file" => Some("path"),
        "syslog" => Some("address"),
        "webhook" => Some("url"),
        _ => None,
    }
}

/// `text` as a YAML single-quoted scalar: taken literally.
pub fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_targets_and_typed_options() {
        assert_eq!(parse("stdout").unwrap(), SinkSpec::default_stdout());
        assert_eq!(
            parse("stdout,format=ocsf").unwrap(),
            SinkSpec::Stdout {
                format: Format::Ocsf
            }
        );
        let SinkSpec::File(file) = parse("file:/var/log/it's.json,keep=3,max-size=1KiB").unwrap()
        else {
            panic!("not a file sink");
        };
        assert_eq!(file.path, std::path::Path::new("/var/log/it's.json"));
        assert_eq!(file.keep, 3);
        assert_eq!(file.max_size.as_u64(), 1024);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        for (spec, says) in [
            ("kafka:x", "unknown sink kind `kafka`"),
            ("file", "needs its path"),
            ("syslog:tcp:localhost", "not HOST:PORT"),
            ("stdout:x", "takes no target"),
            ("file:/x,keep", "not KEY=VALUE"),
            ("file:/x,keep=[1]", "only plain values"),
            ("file:/x,colour=red", "colour"),
            ("file:/x,keep=many", "keep"),
        ] {
            let error = parse(spec).unwrap_err();
            assert!(error.contains(says), "{spec}: {error}");
        }
    }
}
