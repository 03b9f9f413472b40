//! Graph provisioning over gRPC and in its real databases.

mod crash;
mod end_to_end;
mod faults;
mod security;
mod spec;
