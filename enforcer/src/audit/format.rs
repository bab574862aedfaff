//! How a record is written: ECS JSON (the default, [`super::record`]'s own
//! field names, written by [`super::ecs`]) or OCSF ([`super::ocsf`]).

use serde::Deserialize;

use super::record::Record;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Elastic Common Schema field names, as documented in the README.
    #[default]
    Ecs,
    /// Open Cybersecurity Schema Framework 1.3 classes: process, file system
    /// and module activity for decisions, device config state change for
    /// policy changes, the base event for accounting records.
    Ocsf,
}

impl Format {
    /// Appends `record` as one JSON object (no newline) to `out`.
    pub fn encode(self, record: &Record, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match self {
            Self::Ecs => super::ecs::write(record, out),
            Self::Ocsf => super::ocsf::write(record, out),
        }
    }
}
