//! The domain's storage ports on real databases: [`sql::SqlStore`] implements the
//! operation store, the job queue, retention and the provisioning store on SQLite or Postgres;
//! [`SqlGraphDatabases`] the graphs' own databases. Nothing here knows gRPC.

mod graphs;
pub mod sql;

pub use graphs::{graphs_dir, SqlGraphDatabases};
