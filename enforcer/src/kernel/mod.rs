//! What the running kernel offers: structure layouts from BTF, active LSMs,
//! namespaces.

pub mod features;
pub mod host;
pub mod layout;
pub mod symbols;
