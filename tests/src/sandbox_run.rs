//! Playing a sandbox scenario from a test: parse, run to the end, print the summary, fail on a
//! run that failed; and what the tests read back from the result.

// Tests fail loudly.
#![allow(clippy::panic)]

use surge_sandbox::report::{RunResult, summary_text};
use surge_sandbox::run::{RunOptions, run};
use surge_sandbox::scenario::Scenario;

/// Plays `yaml` with `options`; panics if the scenario does not parse or the run fails.
pub async fn play(yaml: &str, options: &RunOptions) -> RunResult {
    let scenario = Scenario::parse(yaml).unwrap_or_else(|e| panic!("scenario: {e}"));
    let result = run(&scenario, options, std::future::pending())
        .await
        .unwrap_or_else(|e| panic!("sandbox run failed: {e}"));
    println!("{}", summary_text(&result));
    assert!(result.failure.is_none(), "{:?}", result.failure);
    result
}

/// Replicas of the accepted scale writes, in order.
pub fn replicas_written(result: &RunResult) -> Vec<i64> {
    result
        .scale_writes
        .iter()
        .filter(|w| (200..300).contains(&w.status))
        .filter_map(|w| w.replicas)
        .collect()
}
