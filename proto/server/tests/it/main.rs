//! capstan-server's integration tests, in one binary.

mod connections;
mod db_failures;
