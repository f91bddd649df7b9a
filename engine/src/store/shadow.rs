//! Shadow runs of a plugin's candidate version, as the store keeps them: one report per
//! plugin name (the latest candidate's), summed across every node sharing the store.
//!
//! A report is a [`ShadowSummary`] (the candidate, how many attempts to compare, counters,
//! its state) plus the first [`MAX_SHADOW_CASES`] differing cases. Both backends keep a
//! bounded number of records per plugin name (the summary and at most that many cases),
//! whatever the number of attempts compared, and apply [`ShadowSummary::count`] under a lock
//! of the summary, so the counters are exact and stop at the planned number of attempts
//! even with several nodes recording at once. The plugin host (`plugin/shadow.rs`) runs the
//! candidate and decides what differs; the store only counts and keeps.

use serde::{Deserialize, Serialize};

/// Differing cases kept per report (the first ones; the counters go on counting).
pub const MAX_SHADOW_CASES: usize = 50;

/// Where a shadow run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShadowState {
    /// Comparing the next attempts.
    Running,
    /// Every planned attempt was compared; the candidate waits for promote or discard.
    Complete,
    /// The candidate was made current.
    Promoted,
    /// The candidate was dropped.
    Discarded,
}

impl ShadowState {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowState::Running => "running",
            ShadowState::Complete => "complete",
            ShadowState::Promoted => "promoted",
            ShadowState::Discarded => "discarded",
        }
    }

    /// Whether the candidate is still pending (running or complete, not yet promoted or
    /// discarded).
    pub fn is_open(self) -> bool {
        matches!(self, ShadowState::Running | ShadowState::Complete)
    }
}

/// The counters of a shadow run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShadowCounts {
    /// Attempts run with both versions.
    pub compared: u64,
    /// Attempts where both versions produced the same request (or dropped, or failed alike).
    pub same: u64,
    /// Attempts where anything differed.
    pub differing: u64,
    /// One version delivered and the other dropped.
    pub decision: u64,
    /// One version failed and the other did not, or both failed with different codes.
    pub error: u64,
    /// Both delivered, with different headers.
    pub headers: u64,
    /// Both delivered, with bodies of different SHA-256.
    pub body: u64,
    /// Both delivered, to a different URL or with a different method.
    pub url: u64,
    /// Attempts where the current version failed.
    pub current_errors: u64,
    /// Attempts where the candidate failed (trap, deadline, fuel, error, invalid output).
    pub candidate_errors: u64,
    /// The plugin's own time in the current chain, summed, in µs.
    pub current_micros: u64,
    /// The candidate's own time in its chain, summed, in µs.
    pub candidate_micros: u64,
    /// The longest single time of each, in µs.
    pub current_max_micros: u64,
    pub candidate_max_micros: u64,
}

/// A shadow run's plan and counters (one per plugin name: a new candidate replaces it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowSummary {
    /// The candidate's version id.
    pub candidate: u64,
    /// The version that was current when the candidate was uploaded.
    pub current: u64,
    /// How many attempts to compare.
    pub attempts: u64,
    pub state: ShadowState,
    /// When the candidate was uploaded, ms since the Unix epoch.
    pub started_at: u64,
    /// When the run completed, or the candidate was promoted or discarded.
    #[serde(default)]
    pub ended_at: Option<u64>,
    #[serde(default)]
    pub counts: ShadowCounts,
}

impl ShadowSummary {
    /// A new run of `attempts` comparisons of `candidate` against `current`.
    pub fn start(candidate: u64, current: u64, attempts: u64, now_ms: u64) -> Self {
        ShadowSummary {
            candidate,
            current,
            attempts,
            state: ShadowState::Running,
            started_at: now_ms,
            ended_at: None,
            counts: ShadowCounts::default(),
        }
    }

    /// Counts one compared attempt of `candidate`, if this run still takes it. Returns what the
    /// backend does with the case: [`ShadowRecorded::NotRunning`] (nothing changes), or
    /// counted, with `keep` set when the case is one of the first [`MAX_SHADOW_CASES`]
    /// differing ones (its sequence number is `counts.differing - 1`).
    pub fn count(&mut self, candidate: u64, case: &ShadowCase, now_ms: u64) -> ShadowRecorded {
        if self.candidate != candidate
            || self.state != ShadowState::Running
            || self.counts.compared >= self.attempts
        {
            return ShadowRecorded::NotRunning;
        }
        let counts = &mut self.counts;
        counts.compared += 1;
        let differing = !case.differences.is_empty();
        if differing {
            counts.differing += 1;
        } else {
            counts.same += 1;
        }
        for kind in &case.differences {
            match kind.as_str() {
                "decision" => counts.decision += 1,
                "error" => counts.error += 1,
                "headers" => counts.headers += 1,
                "body" => counts.body += 1,
                "url" => counts.url += 1,
                _ => {}
            }
        }
        counts.current_errors += u64::from(case.current.decision == "error");
        counts.candidate_errors += u64::from(case.candidate.decision == "error");
        counts.current_micros += case.current.micros;
        counts.candidate_micros += case.candidate.micros;
        counts.current_max_micros = counts.current_max_micros.max(case.current.micros);
        counts.candidate_max_micros = counts.candidate_max_micros.max(case.candidate.micros);
        let complete = counts.compared >= self.attempts;
        if complete {
            self.state = ShadowState::Complete;
            self.ended_at = Some(now_ms);
        }
        ShadowRecorded::Counted {
            keep: differing && counts.differing as usize <= MAX_SHADOW_CASES,
            complete,
        }
    }

    /// Ends an open run of `candidate` as promoted or discarded; `false` if the run is of
    /// another candidate or already ended.
    pub fn end(&mut self, candidate: u64, state: ShadowState, now_ms: u64) -> bool {
        if self.candidate != candidate || !self.state.is_open() {
            return false;
        }
        self.state = state;
        if self.ended_at.is_none() || state != ShadowState::Complete {
            self.ended_at = Some(now_ms);
        }
        true
    }
}

/// What one version did with an attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowSide {
    /// `deliver`, `drop` or `error`.
    pub decision: String,
    /// The failure code (`plugin_trap`, `plugin_timeout`, …) when `error`.
    #[serde(default)]
    pub error_code: Option<String>,
    /// The failure's message (capped), when `error`.
    #[serde(default)]
    pub error_message: Option<String>,
    /// The plugin's own time in the chain, µs.
    pub micros: u64,
    /// Hex SHA-256 of the body it would send, when `deliver`.
    #[serde(default)]
    pub body_sha256: Option<String>,
    /// Header names whose values differ from the other version's (or that only one sets).
    #[serde(default)]
    pub changed_headers: Vec<String>,
}

/// One compared attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowCase {
    /// When the attempt ran, ms since the Unix epoch.
    pub at: u64,
    pub webhook_id: String,
    pub delivery_id: String,
    pub event_id: String,
    pub attempt: u32,
    /// What differed: `decision`, `error`, `headers`, `body`, `url` (empty: the same).
    pub differences: Vec<String>,
    pub current: ShadowSide,
    pub candidate: ShadowSide,
}

/// A shadow run as the API reports it: the summary and the kept differing cases, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowReport {
    pub summary: ShadowSummary,
    pub cases: Vec<ShadowCase>,
}

/// What recording a compared attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowRecorded {
    /// Counted; `keep`: the case was kept; `complete`: that was the last planned attempt.
    Counted { keep: bool, complete: bool },
    /// No running shadow of that candidate (another candidate replaced it, it was promoted or
    /// discarded, or it has compared every planned attempt): nothing was written.
    NotRunning,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(differences: &[&str]) -> ShadowCase {
        ShadowCase {
            differences: differences.iter().map(|d| d.to_string()).collect(),
            current: ShadowSide {
                decision: "deliver".into(),
                micros: 10,
                ..ShadowSide::default()
            },
            candidate: ShadowSide {
                decision: if differences.contains(&"decision") {
                    "drop".into()
                } else {
                    "deliver".into()
                },
                micros: 30,
                ..ShadowSide::default()
            },
            ..ShadowCase::default()
        }
    }

    #[test]
    fn counts_stop_at_the_planned_attempts_and_keep_the_first_differing_cases() {
        let mut summary = ShadowSummary::start(2, 1, 3, 100);
        assert_eq!(
            summary.count(2, &case(&[]), 1),
            ShadowRecorded::Counted {
                keep: false,
                complete: false
            }
        );
        assert_eq!(
            summary.count(9, &case(&[]), 1),
            ShadowRecorded::NotRunning,
            "another candidate's case is not counted"
        );
        assert_eq!(
            summary.count(2, &case(&["decision"]), 2),
            ShadowRecorded::Counted {
                keep: true,
                complete: false
            }
        );
        assert_eq!(
            summary.count(2, &case(&["headers", "body"]), 3),
            ShadowRecorded::Counted {
                keep: true,
                complete: true
            }
        );
        assert_eq!(summary.count(2, &case(&[]), 4), ShadowRecorded::NotRunning);
        let counts = &summary.counts;
        assert_eq!((counts.compared, counts.same, counts.differing), (3, 1, 2));
        assert_eq!(
            (counts.decision, counts.headers, counts.body, counts.url),
            (1, 1, 1, 0)
        );
        assert_eq!(
            (counts.current_micros, counts.candidate_max_micros),
            (30, 30)
        );
        assert_eq!(summary.state, ShadowState::Complete);
        assert_eq!(summary.ended_at, Some(3));

        assert!(!summary.end(9, ShadowState::Promoted, 5));
        assert!(summary.end(2, ShadowState::Promoted, 5));
        assert_eq!(summary.state, ShadowState::Promoted);
        assert!(!summary.end(2, ShadowState::Discarded, 6), "already ended");
    }

    #[test]
    fn only_the_first_cases_are_kept() {
        let mut summary = ShadowSummary::start(2, 1, 1000, 0);
        let kept = (0..MAX_SHADOW_CASES + 10)
            .filter(|_| {
                matches!(
                    summary.count(2, &case(&["decision"]), 1),
                    ShadowRecorded::Counted { keep: true, .. }
                )
            })
            .count();
        assert_eq!(kept, MAX_SHADOW_CASES);
        assert_eq!(summary.counts.differing, MAX_SHADOW_CASES as u64 + 10);
    }
}
