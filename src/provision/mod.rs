//! Provisioning: running a machine's provisioners over SSH, and the content
//! hashes that decide when a `run = "once"` provisioner runs again.

mod hash;
mod run;

pub use hash::content_hash;
pub use run::{ProvisionError, Runner, template_context};
