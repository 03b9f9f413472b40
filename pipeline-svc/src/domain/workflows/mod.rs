//! The workflows pipeline-svc runs, and the ports they reach other services through.

pub mod provisioning;
pub mod registry;
pub mod showcase;

/// Every step name of every workflow (fault injection names one of them).
pub fn all_step_names() -> Vec<&'static str> {
    showcase::RICH_STEPS
        .iter()
        .chain(provisioning::PROVISION_STEPS.iter())
        .chain(provisioning::DEPROVISION_STEPS.iter())
        .map(|s| s.name)
        .collect()
}
