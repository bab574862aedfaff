//! The enforcer agent.
//!
//! Two pipelines, each a chain of small modules:
//! - policy flows into the kernel: [`policy`] (compile, apply) -> kernel maps;
//! - decisions flow out of it: ring buffer -> [`audit`] (decode, enrich,
//!   sinks).
//!
//! [`kernel`] finds out what the running kernel offers, [`backend`] loads and
//! attaches the programs, and [`agent`] runs it all.

pub mod active;
pub mod agent;
pub mod audit;
pub mod backend;
pub mod cli;
pub mod config;
pub mod container;
pub mod control;
pub mod hook;
pub mod kernel;
pub mod maps;
pub mod ops;
pub mod packages;
pub mod pins;
pub mod policy;
pub mod reload;
pub mod resolve;
pub mod scopes;
pub mod stats;
pub mod tracking;
pub mod trivy;

/// An error and its sources on one line. Error messages in this crate
/// include their immediate cause (so that one-level logging is complete);
/// a cause already contained in the text is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
