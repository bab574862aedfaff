//! The agent's configuration file (`enforcer run --config FILE`): a YAML
//! mapping whose keys are `run`'s long option names (`mode`, `allow-path`,
//! `metrics-address`, `sink`, ...) and whose values are what the option
//! takes: a scalar, a list for a repeatable option, `true`/`false` for a
//! switch. A `sink` item may also be a mapping: `type` (the kind), the
//! kind's target key (`path`, `address`, `url`) and its options.
//!
//! The file becomes command-line arguments, checked by the same parser and
//! documented by the same `--help`; an option given on the command line (or
//! in its environment variable) wins over the file. Problems name the file,
//! the line and the key.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use clap::{ArgAction, CommandFactory as _, FromArgMatches as _, parser::ValueSource};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::{audit::sink::spec, cli::Cli};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    At {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

/// The command line, with the config file's options added where `--config`
/// names one. Exits with clap's message for a bad command line.
pub fn parse_args(args: Vec<OsString>) -> Result<Cli, ConfigError> {
    let matches = Cli::command().get_matches_from(args.clone());
    let Some(("run", run)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit()));
    };
    let Some(path) = run.get_one::<PathBuf>("config").cloned() else {
        return Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit()));
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let given = |id: &str| {
        matches!(
            run.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let added = arguments(&path, &text, &given)?;
    let mut all = args;
    all.extend(added.into_iter().map(OsString::from));
    let matches = Cli::command()
        .try_get_matches_from(all)
        .map_err(|error| ConfigError::File {
            path: path.clone(),
            message: with_the_file(&error),
        })?;
    Cli::from_arg_matches(&matches).map_err(|error| ConfigError::File {
        path,
        message: with_the_file(&error),
    })
}

/// Clap's message for an error between the file and the command line.
fn with_the_file(error: &clap::Error) -> String {
    let message = error.to_string();
    let first = message.lines().next().unwrap_or_default();
    format!(
        "{} (with the options of the config file)",
        first.trim_start_matches("error: ")
    )
}

/// The file's options as arguments, each checked on its own so that a bad
/// value is reported at its line; options `given` on the command line are
/// left out.
fn arguments(
    path: &Path,
    text: &str,
    given: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, ConfigError> {
    let at = |line: u64, message: String| ConfigError::At {
        path: path.to_owned(),
        line,
        message,
    };
    let options: BTreeMap<String, Spanned<Value>> = if text.trim().is_empty() {
        BTreeMap::new()
    } else {
        serde_saphyr::from_str(text).map_err(|error| {
            let line = error.location().map_or(1, |location| location.line());
            let message = error.without_snippet().to_string();
            let message = message
                .split_once(" at line ")
                .map_or(message.as_str(), |(message, _)| message)
                .to_owned();
            at(
                line,
                format!("not a mapping of option names to values: {message}"),
            )
        })?
    };
    let command = Cli::command();
    let run = command
        .find_subcommand("run")
        .expect("the run subcommand exists");
    let mut all = Vec::new();
    for (key, value) in &options {
        let line = value.referenced.line();
        let Some(arg) = run
            .get_arguments()
            .chain(command.get_arguments())
            .find(|arg| arg.get_long() == Some(key.as_str()) && !arg.is_hide_set())
        else {
            return Err(at(
                line,
                format!("`{key}` is not an option of `enforcer run` (see enforcer run --help)"),
            ));
        };
        if key == "config" {
            return Err(at(
                line,
                "`config` cannot name another config file".to_owned(),
            ));
        }
        if given(arg.get_id().as_str()) {
            continue;
        }
        let values = option_values(key, arg.get_action(), &value.value).map_err(|m| at(line, m))?;
        // Alone, so the error is this key's.
        let mut alone = vec!["enforcer".to_owned(), "run".to_owned()];
        alone.extend(values.iter().cloned());
        if let Err(error) = Cli::command().try_get_matches_from(&alone) {
            let message = error.to_string();
            let first = message.lines().next().unwrap_or_default();
            return Err(at(
                line,
                format!("`{key}`: {}", first.trim_start_matches("error: ")),
            ));
        }
        all.extend(values);
    }
    Ok(all)
}

/// The arguments `value` of option `key` stands for.
fn option_values(key: &str, action: &ArgAction, value: &Value) -> Result<Vec<String>, String> {
    let scalar = |value: &Value| -> Result<String, String> {
        match value {
            Value::String(text) => Ok(text.clone()),
            Value::Number(number) => Ok(number.to_string()),
            Value::Bool(flag) => Ok(flag.to_string()),
            Value::Null => Err(format!("`{key}` has no value")),
            Value::Object(map) if key == "sink" => sink_spec(map),
            Value::Array(_) | Value::Object(_) => Err(format!("`{key}` takes a single value here")),
        }
    };
    match (action, value) {
        (ArgAction::SetTrue, Value::Bool(true)) => Ok(vec![format!("--{key}")]),
        (ArgAction::SetTrue, Value::Bool(false)) => Ok(Vec::new()),
        (ArgAction::SetTrue, _) => Err(format!("`{key}` is a switch: true or false")),
        (ArgAction::Append, Value::Array(items)) => items
            .iter()
            .map(|item| scalar(item).map(|item| format!("--{key}={item}")))
            .collect(),
        (_, Value::Array(_)) => Err(format!("`{key}` takes one value, not a list")),
        (_, value) => Ok(vec![format!("--{key}={}", scalar(value)?)]),
    }
}

/// A `sink` mapping as `--sink` spells it.
fn sink_spec(map: &serde_json::Map<String, Value>) -> Result<String, String> {
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a `sink` mapping needs a `type`: stdout, file, syslog or webhook")?;
    let main = spec::target_key(kind);
    let mut text = kind.to_owned();
    if let Some(key) = main
        && let Some(target) = map.get(key)
    {
        let Value::String(target) = target else {
            return Err(format!("sink `{key}` is not a string"));
        };
        text.push(':');
        text.push_str(target);
    }
    for (key, value) in map {
        if key == "type" || Some(key.as_str()) == main {
            continue;
        }
        let value = match value {
            // Quoted, so that it stays a string when it is read back.
            Value::String(text) if !text.contains(',') => spec::quoted(text),
            Value::String(_) => {
                return Err(format!("sink option `{key}`: a comma cannot be given"));
            }
            Value::Number(number) => number.to_string(),
            Value::Bool(flag) => flag.to_string(),
            _ => return Err(format!("sink option `{key}` takes a single value")),
        };
        let _ = write!(text, ",{key}={value}");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(text: &str, given: &[&str]) -> Result<Vec<String>, ConfigError> {
        arguments(Path::new("/etc/enforcer.yaml"), text, &|id| {
            given.contains(&id)
        })
    }

    #[test]
    fn options_become_arguments_and_the_command_line_wins() {
        let text = "mode: audit\nallow-path: [/opt/**, /srv/*]\naudit-exec-sessions: true\n\
                    allow-memfd: false\nmetrics-address: 0.0.0.0:9464\nrate-limit: 5/1s\n\
                    sink:\n  - stdout\n  - type: file\n    path: /var/log/a b.json\n    keep: 3\n\
                    \x20   format: ocsf\n";
        let args = args_of(text, &["metrics_address"]).unwrap();
        assert_eq!(
            args,
            [
                "--allow-path=/opt/**",
                "--allow-path=/srv/*",
                "--audit-exec-sessions",
                "--mode=audit",
                "--rate-limit=5/1s",
                "--sink=stdout",
                "--sink=file:/var/log/a b.json,format='ocsf',keep=3",
            ]
        );
        let mut command_line = vec!["enforcer".to_owned(), "run".to_owned()];
        command_line.extend(args);
        let cli = <Cli as clap::Parser>::try_parse_from(command_line).unwrap();
        let crate::cli::Command::Run(run) = cli.command else {
            panic!("not run");
        };
        assert_eq!(run.sink.len(), 2);
        assert_eq!(run.rate_limit.burst, 5);
    }

    #[test]
    fn problems_name_the_line_and_the_key() {
        for (text, line, says) in [
            (
                "mode: audit\nmodee: enforce\n",
                2,
                "`modee` is not an option",
            ),
            (
                "\n\nmode: sometimes\n",
                3,
                "`mode`: invalid value 'sometimes'",
            ),
            ("allow-memfd: yes please\n", 1, "is a switch"),
            ("backend: [lsm, signal]\n", 1, "takes one value, not a list"),
            ("sink:\n  - type: file\n", 2, "needs its path"),
            ("sink:\n  - path: /x\n", 2, "needs a `type`"),
            ("config: /x\n", 1, "cannot name another"),
            ("- a\n- b\n", 1, "not a mapping"),
        ] {
            let error = args_of(text, &[]).unwrap_err();
            let ConfigError::At {
                line: at, message, ..
            } = &error
            else {
                panic!("{error}");
            };
            assert_eq!(*at, line, "{text}: {error}");
            assert!(message.contains(says), "{text}: {error}");
            assert!(
                error.to_string().starts_with("/etc/enforcer.yaml:"),
                "{error}"
            );
        }
    }
}
