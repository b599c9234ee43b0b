//! A hand-written SVG chart of a run: offered load and ready capacity (requests per second, left
//! axis), desired replicas (right axis, scaled so that one replica sits at one pod's capacity),
//! with the load step and the first scale PATCH marked.

use std::fmt::Write;

use crate::report::RunResult;

const W: f64 = 960.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn polyline(points: &[(f64, f64)], color: &str, dash: &str, width: f64) -> String {
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    format!(
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\" stroke-dasharray=\"{dash}\" points=\"{}\"/>\n",
        pts.join(" ")
    )
}

/// Steps: a value holds until the next sample.
fn steps(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len() * 2);
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push((p.0, points[i - 1].1));
        }
        out.push(*p);
    }
    out
}

/// Renders the chart.
pub fn render(result: &RunResult) -> String {
    let seconds = result.seconds.len().max(1) as f64;
    let capacity = result.capacity_per_pod_rps.max(1e-9);
    // One scale for both axes: a replica is drawn at the height of its capacity, so the ready
    // capacity line is also the ready replicas line and the desired replicas line shows the
    // capacity asked for.
    let max_rps = result
        .seconds
        .iter()
        .map(|s| s.offered_rps.max(s.ready_capacity_rps))
        .chain(
            result
                .timeline
                .iter()
                .map(|p| f64::from(p.desired) * capacity),
        )
        .fold(1.0_f64, f64::max)
        * 1.1;
    let max_replicas = max_rps / capacity;
    let x = |t: f64| LEFT + t / seconds * (W - LEFT - RIGHT);
    let y_rps = |v: f64| H - BOTTOM - v / max_rps * (H - TOP - BOTTOM);
    let y_rep = |v: f64| H - BOTTOM - v / max_replicas * (H - TOP - BOTTOM);

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">surge-sandbox: {} </text>\n",
        escape(&result.scenario.name)
    );
    // Axes and grid.
    for i in 0..=5 {
        let v = max_rps * f64::from(i) / 5.0;
        let yy = y_rps(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e5e5e5\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
    }
    let rep_step = ((max_replicas / 12.0).ceil() as u32).max(1);
    for r in (0..=(max_replicas as u32)).step_by(rep_step as usize) {
        let yy = y_rep(f64::from(r));
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{:.1}\">{r}</text>",
            W - RIGHT + 6.0,
            yy + 4.0
        );
    }
    let tick_every = if seconds > 120.0 {
        20
    } else if seconds > 40.0 {
        10
    } else {
        5
    };
    let mut t = 0;
    while f64::from(t) <= seconds {
        let xx = x(f64::from(t));
        let _ = writeln!(
            svg,
            "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
             <text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\">{t}</text>",
            H - BOTTOM,
            H - BOTTOM + 5.0,
            H - BOTTOM + 18.0
        );
        t += tick_every;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">seconds</text>\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">requests per second</text>\
         <text x=\"{}\" y=\"{}\" transform=\"rotate(90 {} {})\" text-anchor=\"middle\">replicas</text>",
        (LEFT + W - RIGHT) / 2.0,
        H - BOTTOM + 36.0,
        H / 2.0,
        H / 2.0,
        W - 20.0,
        H / 2.0,
        W - 20.0,
        H / 2.0
    );
    // Markers.
    let mut marker = |at: Option<f64>, color: &str, label: &str| {
        if let Some(at) = at {
            let xx = x(at);
            let _ = writeln!(
                svg,
                "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"{color}\" stroke-dasharray=\"2,3\"/>\
                 <text x=\"{:.1}\" y=\"{}\" fill=\"{color}\">{label}</text>",
                H - BOTTOM,
                xx + 3.0,
                TOP + 12.0
            );
        }
    };
    let summary = &result.summary;
    marker(summary.step_at_s, "#444", "load step");
    marker(
        summary
            .step_at_s
            .zip(summary.first_scale_patch_ms)
            .map(|(s, ms)| s + ms / 1000.0),
        "#c0392b",
        "",
    );
    // Series (per-second values are drawn at the middle of their second).
    let offered: Vec<(f64, f64)> = result
        .seconds
        .iter()
        .map(|s| (x(s.t as f64), y_rps(s.offered_rps)))
        .chain(
            result
                .seconds
                .last()
                .map(|s| (x(s.t as f64 + 1.0), y_rps(s.offered_rps))),
        )
        .collect();
    // Counts from before the load started are drawn from t = 0.
    let timeline: Vec<_> = result
        .timeline
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.t = p.t.max(0.0);
            p
        })
        .collect();
    let capacity: Vec<(f64, f64)> = timeline
        .iter()
        .map(|p| (x(p.t), y_rps(p.ready_capacity_rps)))
        .chain(
            timeline
                .last()
                .map(|p| (x(seconds), y_rps(p.ready_capacity_rps))),
        )
        .collect();
    let desired: Vec<(f64, f64)> = timeline
        .iter()
        .map(|p| (x(p.t), y_rep(f64::from(p.desired))))
        .chain(
            timeline
                .last()
                .map(|p| (x(seconds), y_rep(f64::from(p.desired)))),
        )
        .collect();
    svg.push_str(&polyline(&steps(&capacity), "#27ae60", "", 2.5));
    svg.push_str(&polyline(&steps(&offered), "#2c7be5", "", 2.0));
    svg.push_str(&polyline(&steps(&desired), "#e67e22", "6,4", 1.5));
    // Legend.
    let legend = [
        ("#2c7be5", "", "offered load (rps)"),
        ("#27ae60", "", "ready capacity = ready replicas"),
        ("#e67e22", "6,4", "desired replicas"),
        ("#c0392b", "2,3", "first scale PATCH"),
    ];
    let mut lx = LEFT + 10.0;
    for (color, dash, label) in legend {
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"38\" y2=\"38\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>\
             <text x=\"{}\" y=\"42\">{label}</text>",
            lx + 24.0,
            lx + 28.0
        );
        // About 6.5 px per character at 12 px sans-serif.
        lx += 28.0 + label.len() as f64 * 6.5 + 24.0;
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
