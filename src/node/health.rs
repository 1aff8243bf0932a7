//! Failed background work, reported by `/health` and in metrics.
//!
//! Background tasks (index builds, change-feed retention, sequence
//! reservation) have no client to answer. When one fails, its core records
//! the failure here: the count in its own counter slot (lock-free, read by
//! `/health` and `/metrics`), the details in a short list that is locked
//! only when a failure is recorded or when `/health` finds the count above
//! zero. `/health` then answers `"status": "degraded"` (still 200: the
//! server serves) and names each failure, its task and its core, until the
//! server restarts or the task succeeds again (see [`Failures::clear`]).

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;

/// The most failures kept with their details (the count keeps going).
const KEPT: usize = 32;

/// One failed background task.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub core: usize,
    /// What failed, e.g. `index_build` or `changefeed_retention`.
    pub task: &'static str,
    /// Which instance (an index id, …), when there are several.
    pub subject: Option<String>,
    pub message: String,
    pub at_unix_ms: u64,
}

/// The node's record of failed background tasks.
#[derive(Default)]
pub struct Failures {
    kept: Mutex<VecDeque<Failure>>,
}

impl Failures {
    /// Records a failure (logged as an error).
    pub fn record(&self, f: Failure) {
        tracing::error!(core = f.core, task = f.task, subject = ?f.subject, "background task failed: {}", f.message);
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|k| !(k.task == f.task && k.subject == f.subject && k.core == f.core));
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(f);
    }

    /// The task has succeeded since: no longer degraded on its account.
    pub fn clear(&self, task: &'static str, subject: Option<&str>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|k| !(k.task == task && k.subject.as_deref() == subject));
    }

    /// The failures still standing.
    pub fn standing(&self) -> Vec<Failure> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(task: &'static str, subject: Option<&str>) -> Failure {
        Failure {
            core: 0,
            task,
            subject: subject.map(str::to_string),
            message: "boom".into(),
            at_unix_ms: 1,
        }
    }

    #[test]
    fn a_failure_stands_until_its_task_succeeds_and_the_list_is_bounded() {
        let f = Failures::default();
        f.record(failure("index_build", Some("3")));
        f.record(failure("index_build", Some("3")));
        f.record(failure("changefeed_retention", None));
        assert_eq!(f.standing().len(), 2);
        f.clear("index_build", Some("3"));
        assert_eq!(f.standing().len(), 1);
        for i in 0..100 {
            f.record(failure("index_build", Some(&i.to_string())));
        }
        assert_eq!(f.standing().len(), KEPT);
    }
}
