//! The showcase demo with a real registry in process (and, for the drills, real
//! pipeline-svc processes).

mod crash_phases;
mod deadline_and_retry;
mod demo_command;
mod end_to_end;
mod faults;
mod shared_alias;
mod token_file;
