//! The audit pipeline: kernel ring buffer -> [`decode`] -> [`enrich`] ->
//! [`sink`]. Data only flows that way; [`pipeline`] wires the stages.

pub mod decode;
pub mod ecs;
pub mod enrich;
pub mod format;
pub mod limit;
pub mod lineage;
pub mod ocsf;
pub mod pipeline;
pub mod record;
pub mod sink;
