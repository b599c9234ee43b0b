//! The comparison's scenario set, as per-second offered-load traces: 2x, 5x and 10x steps, a
//! 20 s spike, a ramp, a noisy diurnal curve (seeded) and a drop to zero and back.
//!
//! The traces are generated here and also committed as JSON under `sandbox/scenarios/compare/`
//! (one [`Scenario`] per file), so a trace recorded elsewhere can be compared the same way.
//! Loads are sized for the default pod (100 rps) and the sandbox's default bounds (min 1, max 10,
//! echoing the classic setup): the base load of 60 rps fits one pod at the 70 % target, and a
//! 10x step (600 rps) needs 9.

use serde::{Deserialize, Serialize};

use super::rng::SplitMix64;

/// Base load of the scenarios, requests per second.
pub const BASE_RPS: f64 = 60.0;
/// Seconds of base load before the event in each scenario.
pub const LEAD_IN_S: usize = 30;
/// The sandbox's default bounds: min 1, max 10 (issue 4: "defaults echo the classic setup").
pub const DEFAULT_MIN_REPLICAS: u32 = 1;
/// See [`DEFAULT_MIN_REPLICAS`].
pub const DEFAULT_MAX_REPLICAS: u32 = 10;

/// One scenario: a per-second trace and what to measure against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used for file names.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Second of the load change reaction times are measured from.
    pub event_s: f64,
    /// Fewest replicas.
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// Offered load, requests per second, one value per second.
    pub rps: Vec<f64>,
}

/// A scenario file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not JSON of the expected shape.
    #[error("scenario is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A field's value is out of range.
    #[error("scenario field `{field}`: {problem}")]
    Invalid {
        /// The field, with the index for trace values (`rps[12]`).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

impl Scenario {
    /// Parses and validates a scenario file's JSON.
    pub fn from_json(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = serde_json::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks the values the simulation relies on.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |field: String, problem: &str| ScenarioError::Invalid {
            field,
            problem: problem.to_string(),
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid("name".into(), "must be non-empty [A-Za-z0-9_-]"));
        }
        if self.rps.is_empty() {
            return Err(invalid("rps".into(), "needs at least one second"));
        }
        if let Some(i) = self.rps.iter().position(|v| !v.is_finite() || *v < 0.0) {
            return Err(invalid(format!("rps[{i}]"), "must be a finite number >= 0"));
        }
        if !self.event_s.is_finite() || self.event_s < 0.0 || self.event_s >= self.rps.len() as f64
        {
            return Err(invalid("event_s".into(), "must lie within the trace"));
        }
        if self.max_replicas == 0 || self.max_replicas < self.min_replicas {
            return Err(invalid(
                "max_replicas".into(),
                "must be >= 1 and >= min_replicas",
            ));
        }
        Ok(())
    }
}

fn scenario(name: &str, description: &str, event_s: usize, min: u32, rps: Vec<f64>) -> Scenario {
    Scenario {
        name: name.to_string(),
        description: description.to_string(),
        event_s: event_s as f64,
        min_replicas: min,
        max_replicas: DEFAULT_MAX_REPLICAS,
        rps,
    }
}

/// A step from the base load to `factor` times it at [`LEAD_IN_S`], held 240 s, then back to
/// base for 420 s (long enough for the HPA's 300 s scale-down stabilization to play out).
pub fn step(factor: u32) -> Scenario {
    let high = BASE_RPS * f64::from(factor);
    let rps = (0..LEAD_IN_S + 240 + 420)
        .map(|s| {
            if (LEAD_IN_S..LEAD_IN_S + 240).contains(&s) {
                high
            } else {
                BASE_RPS
            }
        })
        .collect();
    scenario(
        &format!("step-{factor}x"),
        &format!("{BASE_RPS} rps, a {factor}x step for 240 s, back to base"),
        LEAD_IN_S,
        DEFAULT_MIN_REPLICAS,
        rps,
    )
}

/// A 20 s spike to 10x the base load.
pub fn spike() -> Scenario {
    let rps = (0..LEAD_IN_S + 420)
        .map(|s| {
            if (LEAD_IN_S..LEAD_IN_S + 20).contains(&s) {
                BASE_RPS * 10.0
            } else {
                BASE_RPS
            }
        })
        .collect();
    scenario(
        "spike-20s",
        "a 20 s spike to 10x the base load",
        LEAD_IN_S,
        DEFAULT_MIN_REPLICAS,
        rps,
    )
}

/// A linear ramp from base to 10x over 120 s, held 120 s, down over 120 s.
pub fn ramp() -> Scenario {
    let high = BASE_RPS * 10.0;
    let rps = (0..LEAD_IN_S + 360 + 330)
        .map(|s| {
            let s = s as f64 - LEAD_IN_S as f64;
            if s < 0.0 {
                BASE_RPS
            } else if s < 120.0 {
                BASE_RPS + (high - BASE_RPS) * s / 120.0
            } else if s < 240.0 {
                high
            } else if s < 360.0 {
                high - (high - BASE_RPS) * (s - 240.0) / 120.0
            } else {
                BASE_RPS
            }
        })
        .collect();
    scenario(
        "ramp",
        "base to 10x over 120 s, held 120 s, back over 120 s",
        LEAD_IN_S,
        DEFAULT_MIN_REPLICAS,
        rps,
    )
}

/// A day compressed into 20 minutes: base to 9x and back along a cosine, with +-20 % uniform
/// noise per second from a fixed seed.
pub fn diurnal(seed: u64) -> Scenario {
    let period = 1_200.0;
    let mut rng = SplitMix64::new(seed);
    let rps = (0..1_200)
        .map(|s| {
            let phase = 2.0 * std::f64::consts::PI * f64::from(s) / period;
            let curve = BASE_RPS + (BASE_RPS * 9.0 - BASE_RPS) * (1.0 - phase.cos()) / 2.0;
            let noise = 1.0 + 0.4 * (rng.next_f64() - 0.5);
            (curve * noise).round()
        })
        .collect();
    scenario(
        "diurnal-noisy",
        "a day in 20 minutes: base to 9x and back, +-20 % noise per second (seeded)",
        0,
        DEFAULT_MIN_REPLICAS,
        rps,
    )
}

/// 200 rps, nothing for 480 s (enough for every system to reach zero), then 200 rps again;
/// min replicas 0.
pub fn drop_to_zero() -> Scenario {
    let rps = (0..60 + 480 + 120)
        .map(|s| if (60..540).contains(&s) { 0.0 } else { 200.0 })
        .collect();
    scenario(
        "drop-to-zero",
        "200 rps, silence for 480 s (scale to zero allowed), 200 rps again",
        540,
        0,
        rps,
    )
}

/// Seed of the diurnal scenario's noise.
pub const DIURNAL_SEED: u64 = 20_260_101;

/// The whole set, in table order.
pub fn standard_set() -> Vec<Scenario> {
    vec![
        step(2),
        step(5),
        step(10),
        spike(),
        ramp(),
        diurnal(DIURNAL_SEED),
        drop_to_zero(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_standard_scenario_validates_and_round_trips_through_json() {
        for s in standard_set() {
            assert!(s.validate().is_ok(), "{}", s.name);
            let text = serde_json::to_string(&s).unwrap_or_default();
            let back = Scenario::from_json(&text);
            assert!(back.is_ok_and(|b| b == s), "{}", s.name);
        }
    }

    #[test]
    fn the_10x_step_goes_from_base_to_ten_times_base_at_the_event() {
        let s = step(10);
        assert_eq!(s.rps[LEAD_IN_S - 1], BASE_RPS);
        assert_eq!(s.rps[LEAD_IN_S], BASE_RPS * 10.0);
        assert_eq!(s.event_s, LEAD_IN_S as f64);
    }

    #[test]
    fn diurnal_noise_is_reproducible_and_bounded() {
        assert_eq!(diurnal(1), diurnal(1));
        assert_ne!(diurnal(1).rps, diurnal(2).rps);
        assert!(
            diurnal(1)
                .rps
                .iter()
                .all(|&v| (0.0..=BASE_RPS * 9.0 * 1.2 + 1.0).contains(&v))
        );
    }

    #[test]
    fn bad_files_name_the_field() {
        let bad = r#"{"name":"x","description":"","event_s":0,"min_replicas":1,"max_replicas":10,"rps":[1,-2]}"#;
        let err = Scenario::from_json(bad)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("rps[1]"), "{err}");
        let unknown = r#"{"name":"x","description":"","event_s":0,"min_replicas":1,"max_replicas":10,"rps":[1],"extra":1}"#;
        let err = Scenario::from_json(unknown)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("extra"), "{err}");
        let bounds = r#"{"name":"x","description":"","event_s":0,"min_replicas":3,"max_replicas":2,"rps":[1]}"#;
        let err = Scenario::from_json(bounds)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_replicas"), "{err}");
    }
}
