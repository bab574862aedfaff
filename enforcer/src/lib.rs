//! The enforcer agent.
//!
//! Two pipelines, each a chain of small modules:
//! - policy flows into the kernel: [`policy`] (compile, apply) -> kernel maps;
//! - decisions flow out of it: ring buffer -> [`audit`] (decode, enrich,
//!   sinks).
//!
//! [`kernel`] finds out what the running kernel offers, [`backend`] loads and
//! attaches the programs, and [`agent`] runs it all.

pub mod agent;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod kernel;
pub mod maps;
pub mod policy;
pub mod stats;
