//! The run's summary as printed for people at the end of a run.

use super::{RunResult, cold_start};

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

/// The summary as printed at the end of a run.
pub fn summary_text(result: &RunResult) -> String {
    let s = &result.summary;
    let mut out = String::new();
    out.push_str(&format!("== {} ==\n", result.scenario.name));
    if !result.kubernetes.is_empty() {
        out.push_str(&format!("kubernetes: {}\n", result.kubernetes));
    }
    if let Some(failure) = &result.failure {
        out.push_str(&format!("run cut short: {failure}\n"));
    }
    if let (Some(at), Some(rps)) = (s.step_at_s, s.step_rps) {
        out.push_str(&format!(
            "load step at {at:.2} s to {rps:.0} rps (needs {} ready pods of {:.0} rps each)\n",
            s.pods_needed.unwrap_or(0),
            result.capacity_per_pod_rps
        ));
    }
    out.push_str(&format!(
        "step -> first report / surge report at the scaler: {} / {}\n",
        ms(s.first_report_ms),
        ms(s.first_surge_report_ms)
    ));
    out.push_str(&format!(
        "step -> first scale PATCH:      {}\n",
        ms(s.first_scale_patch_ms)
    ));
    out.push_str(&format!(
        "step -> enough ready capacity:  {}\n",
        ms(s.enough_capacity_ms)
    ));
    if let Some(n) = &s.nodes {
        if let Some(split) = n.capacity_split {
            out.push_str(&format!(
                "  of which decision / node / pod start: {} / {} / {}\n",
                ms(Some(split.decision_ms)),
                ms(Some(split.node_ms)),
                ms(Some(split.pod_start_ms))
            ));
        }
        out.push_str(&format!(
            "nodes launched: {} ({} before the step); step -> first node launched / Ready: {} / {}; added node-seconds {:.1}\n",
            n.launched,
            n.launched_before_step,
            ms(n.first_node_launched_ms),
            ms(n.first_node_ready_ms),
            n.node_seconds
        ));
    }
    out.push_str(&format!(
        "seconds overloaded:             {}\n",
        s.overloaded_seconds
    ));
    let unfinished = if s.unfinished > 0 {
        format!(", {} unanswered when the run stopped", s.unfinished)
    } else {
        String::new()
    };
    out.push_str(&format!(
        "requests over {} ms or failed:  {:.2} % ({} requests: {} slower, {} failed{unfinished})\n",
        s.slo_ms,
        s.over_slo_share * 100.0,
        s.requests,
        s.slow,
        s.failed
    ));
    out.push_str(&format!(
        "latency p50 / p99:              {} / {}\n",
        ms(s.p50_ms),
        ms(s.p99_ms)
    ));
    out.push_str(&format!(
        "pod-seconds:                    {:.1}\n",
        s.pod_seconds
    ));
    out.push_str(&format!(
        "replicas: max desired {}, max ready {}; scale writes {} ({} down)\n",
        s.max_desired, s.max_ready, s.scale_writes, s.scale_downs
    ));
    for fault in &result.faults {
        match (&fault.killed, fault.takeover_ms) {
            (Some(killed), took) => out.push_str(&format!(
                "fault {}: {killed} killed at {:.1} s; another replica took over after {}\n",
                fault.fault,
                fault.from_s,
                took.map_or("(none within a minute)".into(), |ms| format!("{ms:.0} ms"))
            )),
            (None, _) => out.push_str(&format!(
                "fault {}: {:.1}-{:.1} s, {} packets dropped\n",
                fault.fault, fault.from_s, fault.until_s, fault.packets_dropped
            )),
        }
    }
    if let Some(png) = &result.png_chart {
        out.push_str(&png.sentence());
        out.push('\n');
    }
    if let Some(cold) = &s.cold_start {
        out.push_str(&cold_start::text(cold));
    }
    out
}
