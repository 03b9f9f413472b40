//! The workflows pipeline-svc runs, and the ports they reach other services through.

pub mod registry;
pub mod showcase;
