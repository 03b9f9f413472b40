//! Graph provisioning. The pure part: what a graph's schema may be (a custom set of node
//! and relationship types, or built-in extensions), how a spec is checked, and the DDL that
//! creates it — one SQLite file or one Postgres schema per graph (no I/O in `spec`, `read`,
//! `ddl`, `ident`, `reserved`, `extensions`). `model` holds the records provisioning
//! creates and their state machines, `ports` the storage it needs, `service` what the API
//! calls, and `workflow/` the durable steps that do the work.
//!
//! A client's spec is refused field by field (`Violation`s with paths such as
//! `schema.nodes[2].properties[0].name`); only a `ValidSchema` reaches the DDL generator,
//! and that only ever emits quoted identifiers that have passed `ident::check`.

pub mod ddl;
pub mod extensions;
pub mod ident;
pub mod model;
pub mod ports;
mod read;
mod reserved;
pub mod service;
pub mod spec;
pub mod workflow;

pub use spec::{
    CustomSchema, NodeType, Property, PropertyType, RelationshipType, SchemaSpec, TableDef,
    ValidSchema, Violation,
};
pub use workflow::ProvisioningResult;
