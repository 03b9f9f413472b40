//! Graph provisioning, the pure part: what a graph's schema may be (a custom set of node and
//! relationship types, or built-in extensions), how a spec is checked, and the DDL that
//! creates it — one SQLite file or one Postgres schema per graph. No I/O here.
//!
//! A client's spec is refused field by field (`Violation`s with paths such as
//! `schema.nodes[2].properties[0].name`); only a `ValidSchema` reaches the DDL generator,
//! and that only ever emits quoted identifiers that have passed `ident::check`.

pub mod ddl;
pub mod extensions;
pub mod ident;
mod read;
pub mod spec;

pub use spec::{
    CustomSchema, NodeType, Property, PropertyType, RelationshipType, SchemaSpec, TableDef,
    ValidSchema, Violation,
};
