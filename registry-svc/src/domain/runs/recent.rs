//! The runs this process wrote last: where their next update starts from.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use uuid::Uuid;

use super::ModelRun;

/// Runs this process wrote last and that may still change (not terminal): the likely
/// state an UpdateRun of one of them starts from, saving its read. Only a guess — the
/// versioned write refuses a stale copy, and UpdateRun then starts over from the store.
#[derive(Default)]
pub struct RecentRuns(Mutex<HashMap<Uuid, ModelRun>>);

/// Few: a run stays here only between two of its writes.
const MAX_RECENT_RUNS: usize = 1_024;
/// Larger runs (up to ~600 KB of params and tags) are not kept: memory stays a few MB.
const MAX_RECENT_RUN_BYTES: usize = 8 << 10;

/// About what a run holds on the heap.
fn approx_bytes(run: &ModelRun) -> usize {
    let text =
        |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    text(&run.params)
        + text(&run.tags)
        + run.metrics.keys().map(|k| k.len() + 8).sum::<usize>()
        + run.name.len()
        + run.status_message.len()
}

impl RecentRuns {
    /// Removes and returns the copy of `id`, if any: one update uses it.
    pub fn take(&self, id: &Uuid) -> Option<ModelRun> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
    }

    pub fn keep(&self, run: &ModelRun) {
        if run.status.is_terminal() || approx_bytes(run) > MAX_RECENT_RUN_BYTES {
            return;
        }
        let mut runs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if runs.len() >= MAX_RECENT_RUNS {
            runs.clear();
        }
        runs.insert(run.id, run.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::runs::{NewRun, RunStatus};

    #[test]
    fn recent_runs_keep_only_small_runs_that_may_still_change() {
        let recent = RecentRuns::default();
        let run = |status: RunStatus, param_bytes: usize| {
            let mut r = NewRun {
                name: "r".into(),
                model_type: "m".into(),
                params: [("p".to_string(), "x".repeat(param_bytes))].into(),
                ..Default::default()
            }
            .into_run(Uuid::new_v4(), 0, "tester");
            r.status = status;
            r
        };
        let small = run(RunStatus::Running, 100);
        recent.keep(&small);
        assert_eq!(recent.take(&small.id).map(|r| r.id), Some(small.id));
        assert!(recent.take(&small.id).is_none(), "a copy serves one update");
        let large = run(RunStatus::Running, MAX_RECENT_RUN_BYTES);
        recent.keep(&large);
        assert!(recent.take(&large.id).is_none(), "large runs are not kept");
        let done = run(RunStatus::Succeeded, 100);
        recent.keep(&done);
        assert!(
            recent.take(&done.id).is_none(),
            "terminal runs are not kept"
        );
    }
}
