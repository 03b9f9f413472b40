//! Field violations: how both services report every problem of a bad request at once,
//! and how those reach clients (`google.rpc.BadRequest` details on INVALID_ARGUMENT).

use std::fmt;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One offending request field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// `field: description; field: description` for messages and logs.
pub struct Joined<'a>(pub &'a [FieldViolation]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

/// Collects violations so that a request reports all its problems at once.
#[derive(Default)]
pub struct Validator {
    list: Vec<FieldViolation>,
}

impl Validator {
    pub fn check(&mut self, ok: bool, field: &str, description: impl FnOnce() -> String) {
        if !ok {
            self.list.push(FieldViolation::new(field, description()));
        }
    }

    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.list.push(FieldViolation::new(field, description));
    }

    pub fn finish(self) -> Result<(), Vec<FieldViolation>> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(self.list)
        }
    }
}

/// INVALID_ARGUMENT with the violations as `google.rpc.BadRequest` details.
pub fn invalid_argument(message: String, violations: Vec<FieldViolation>) -> Status {
    let details = ErrorDetails::with_bad_request(
        violations
            .into_iter()
            .map(|v| tonic_types::FieldViolation::new(v.field, v.description))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}
