//! Operations, steps and events, with the state machines that keep them moving forward.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Micros;

string_enum!(
    /// `PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED`; PENDING may end CANCELLED.
    OpStatus {
        Pending = "PENDING",
        Running = "RUNNING",
        Succeeded = "SUCCEEDED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
    }
);

string_enum!(
    /// `PENDING → RUNNING → PASSED | FAILED | SKIPPED`; PENDING may be SKIPPED. A resumed
    /// operation re-runs a step it left RUNNING, so RUNNING → RUNNING is allowed.
    StepStatus {
        Pending = "PENDING",
        Running = "RUNNING",
        Passed = "PASSED",
        Failed = "FAILED",
        Skipped = "SKIPPED",
    }
);

string_enum!(
    ExecutionMode {
        Direct = "DIRECT",
        Queued = "QUEUED",
    }
);

string_enum!(
    EventType {
        Created = "CREATED",
        Started = "STARTED",
        StepStarted = "STEP_STARTED",
        StepFinished = "STEP_FINISHED",
        Progress = "PROGRESS",
        Compensation = "COMPENSATION",
        CancelRequested = "CANCEL_REQUESTED",
        Finished = "FINISHED",
        Heartbeat = "HEARTBEAT",
        Retried = "RETRIED",
    }
);

impl OpStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// Whether a write may move an operation from `self` to `next`.
    pub fn can_move_to(self, next: OpStatus) -> bool {
        use OpStatus::*;
        match (self, next) {
            (s, _) if s.is_terminal() => false,
            (Pending, _) => true,
            (Running, Pending) => false,
            (Running, _) => true,
            _ => false,
        }
    }
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Passed | Self::Failed | Self::Skipped)
    }

    /// Steps that a resumed operation does not run again.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Passed | Self::Skipped)
    }

    pub fn can_move_to(self, next: StepStatus) -> bool {
        use StepStatus::*;
        match (self, next) {
            (s, _) if s.is_terminal() => false,
            (_, Pending) => false,
            (Pending | Running, _) => true,
            _ => false,
        }
    }
}

/// Why an operation did not succeed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OperationError {
    pub step: Option<String>,
    pub message: String,
    pub compensation_errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub index: i64,
    pub name: String,
    pub phase: String,
    pub status: StepStatus,
    pub detail: String,
    pub start_time: Option<Micros>,
    pub end_time: Option<Micros>,
    pub attempt: i64,
}

/// How the detail of a step the engine skipped (because the operation stopped before it
/// could run or finish) begins; a step its workflow skipped says why in its own words.
pub const NOT_RUN: &str = "not run: ";

impl Step {
    /// Whether a retry leaves the step alone: it passed, or its workflow skipped it after
    /// starting it (not the engine because the operation stopped).
    pub fn finished_for_good(&self) -> bool {
        match self.status {
            StepStatus::Passed => true,
            StepStatus::Skipped => self.start_time.is_some() && !self.detail.starts_with(NOT_RUN),
            _ => false,
        }
    }

    /// Step `index` of a new operation's plan: PENDING, never started.
    pub fn pending(index: usize, name: &str, phase: &str) -> Self {
        Self {
            index: index as i64,
            name: name.to_string(),
            phase: phase.to_string(),
            status: StepStatus::Pending,
            detail: String::new(),
            start_time: None,
            end_time: None,
            attempt: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: Uuid,
    pub kind: String,
    pub status: OpStatus,
    pub progress_percent: i64,
    pub message: String,
    pub owner: String,
    pub execution_mode: ExecutionMode,
    pub request_id: Option<String>,
    /// The workflow's input, as the workflow serialized it.
    pub params: serde_json::Value,
    /// What finished steps saved for the steps after them (and for a resume).
    pub state: serde_json::Value,
    /// What the operation produced, as its workflow encoded it: the engine stores it
    /// without reading it; the API maps it by the operation's kind.
    pub result: Option<serde_json::Value>,
    pub error: Option<OperationError>,
    pub cancel_requested: bool,
    pub last_sequence: i64,
    pub attempts: i64,
    pub create_time: Micros,
    pub update_time: Micros,
    pub start_time: Option<Micros>,
    pub end_time: Option<Micros>,
    /// When it must have ended, or it fails (its compensations run); `None`: never.
    pub deadline: Option<Micros>,
    /// The timeout (microseconds) the deadline was computed from; a retry restarts it.
    pub timeout: Option<Micros>,
    pub steps: Vec<Step>,
}

/// One entry of an operation's event log (or a heartbeat, which is not stored).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub operation_id: Uuid,
    /// 1, 2, 3… per operation; 0 for heartbeats.
    pub sequence: i64,
    pub time: Micros,
    pub kind: EventType,
    pub step: String,
    pub phase: String,
    pub status: OpStatus,
    pub step_status: Option<StepStatus>,
    pub percent: i64,
    pub message: String,
}

impl Event {
    /// The last event of an operation: watch streams end after it.
    pub fn is_terminal(&self) -> bool {
        self.kind == EventType::Finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rank(s: OpStatus) -> u8 {
        match s {
            OpStatus::Pending => 0,
            OpStatus::Running => 1,
            _ => 2,
        }
    }

    proptest! {
        /// Any sequence of allowed moves only ever goes forward, and nothing leaves a
        /// terminal status.
        #[test]
        fn op_status_moves_forward(moves in proptest::collection::vec(0usize..5, 0..20)) {
            let mut s = OpStatus::Pending;
            for m in moves {
                let next = OpStatus::ALL[m];
                if s.can_move_to(next) {
                    prop_assert!(rank(next) >= rank(s));
                    s = next;
                } else {
                    prop_assert!(s.is_terminal() || next == OpStatus::Pending);
                }
            }
        }

        #[test]
        fn step_status_moves_forward(moves in proptest::collection::vec(0usize..5, 0..20)) {
            let mut s = StepStatus::Pending;
            for m in moves {
                let next = StepStatus::ALL[m];
                let was_terminal = s.is_terminal();
                if s.can_move_to(next) {
                    prop_assert!(!was_terminal && next != StepStatus::Pending);
                    s = next;
                } else {
                    prop_assert!(was_terminal || next == StepStatus::Pending);
                }
            }
        }

        #[test]
        fn names_round_trip(i in 0usize..10) {
            let t = EventType::ALL[i];
            prop_assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn every_status_parses_back() {
        for s in OpStatus::ALL {
            assert_eq!(OpStatus::parse(s.as_str()), Some(*s));
        }
        for s in StepStatus::ALL {
            assert_eq!(StepStatus::parse(s.as_str()), Some(*s));
        }
        for m in ExecutionMode::ALL {
            assert_eq!(ExecutionMode::parse(m.as_str()), Some(*m));
        }
        assert_eq!(OpStatus::parse("DONE"), None);
    }
}
