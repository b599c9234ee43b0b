//! One hand-written SVG chart per scenario: on top, offered load (grey area) against each
//! system's ready capacity; below, each system's desired replicas, drawn at the exact times of
//! its scale writes (so a 0.2 s reaction is not rounded to a second). One line per system, a
//! shared time axis, a dashed marker at the scenario's event, and an optional time window to
//! zoom on the reaction.

use std::fmt::Write as _;

use super::report::ScenarioResult;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 250.0;
const TOP_PANEL: (f64, f64) = (40.0, 330.0);
const BOTTOM_PANEL: (f64, f64) = (380.0, 550.0);
/// Colours per system, in order (colour-blind friendly: Okabe-Ito).
const PALETTE: [&str; 6] = [
    "#d55e00", "#e69f00", "#0072b2", "#009e73", "#cc79a7", "#56b4e9",
];

/// A "nice" tick step (1, 2 or 5 x 10^k) giving about `count` ticks up to `max`.
fn tick_step(max: f64, count: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / count;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    step.max(f64::EPSILON)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Axes {
    x_min: f64,
    x_max: f64,
    y_max: f64,
    top: f64,
    bottom: f64,
}

impl Axes {
    fn x(&self, t: f64) -> f64 {
        let t = t.clamp(self.x_min, self.x_max);
        LEFT + (WIDTH - LEFT - RIGHT) * (t - self.x_min) / (self.x_max - self.x_min)
    }
    fn y(&self, v: f64) -> f64 {
        self.bottom - (self.bottom - self.top) * (v / self.y_max).min(1.05)
    }
}

/// A step path through `(t, value)` points (time-ordered): each value holds until the next
/// point's time; points before the window only set the starting value.
fn step_path(axes: &Axes, points: &[(f64, f64)]) -> String {
    let mut d = String::new();
    let mut previous: Option<f64> = None;
    let start = points
        .iter()
        .rposition(|&(t, _)| t <= axes.x_min)
        .unwrap_or(0);
    for &(t, v) in points.iter().skip(start) {
        if t > axes.x_max {
            break;
        }
        let t = t.max(axes.x_min);
        let (x, y) = (axes.x(t), axes.y(v));
        match previous {
            None => {
                let _ = write!(d, "M{x:.1},{y:.1}");
            }
            // Unchanged values add nothing to a step line.
            Some(p) if p == v => continue,
            Some(_) => {
                let _ = write!(d, "H{x:.1}V{y:.1}");
            }
        }
        previous = Some(v);
    }
    if let Some(v) = previous {
        let _ = write!(d, "H{:.1}V{:.1}", axes.x(axes.x_max), axes.y(v));
    }
    d
}

fn grid(svg: &mut String, axes: &Axes, y_label: &str, y_step: f64) {
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        axes.top,
        WIDTH - LEFT - RIGHT,
        axes.bottom - axes.top
    );
    let mut v = 0.0;
    while v <= axes.y_max + 1e-9 {
        let y = axes.y(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{v}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
        v += y_step;
    }
    let middle = (axes.top + axes.bottom) / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{middle:.1}" font-size="12" transform="rotate(-90 18 {middle:.1})" text-anchor="middle">{}</text>"#,
        escape(y_label)
    );
}

/// The SVG chart of one scenario, over its whole length or over `window` (seconds).
pub fn svg(result: &ScenarioResult, window: Option<(f64, f64)>) -> String {
    let capacity_per_pod = result.pod.capacity_rps;
    let length = result.offered_rps.len().max(1) as f64;
    let (x_min, x_max) = match window {
        Some((a, b)) if b > a => (a.max(0.0), b.min(length)),
        _ => (0.0, length),
    };
    let x_max = if x_max > x_min { x_max } else { x_min + 1.0 };
    let peak_offered = result.offered_rps.iter().copied().fold(0.0, f64::max);
    let peak_capacity = f64::from(result.target.max_replicas) * capacity_per_pod;
    let rps_step = tick_step(peak_offered.max(peak_capacity), 5.0);
    let rps_axes = Axes {
        x_min,
        x_max,
        y_max: (peak_offered.max(peak_capacity) / rps_step).ceil() * rps_step,
        top: TOP_PANEL.0,
        bottom: TOP_PANEL.1,
    };
    let peak_replicas = result
        .systems
        .iter()
        .flat_map(|s| {
            s.writes
                .iter()
                .map(|w| w.replicas)
                .chain([s.initial_replicas])
        })
        .max()
        .unwrap_or(1)
        .max(result.target.max_replicas)
        .max(1);
    let replica_step = tick_step(f64::from(peak_replicas), 4.0).max(1.0);
    let replica_axes = Axes {
        x_min,
        x_max,
        y_max: (f64::from(peak_replicas) / replica_step).ceil() * replica_step,
        top: BOTTOM_PANEL.0,
        bottom: BOTTOM_PANEL.1,
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let zoom = if window.is_some() {
        format!(" (seconds {x_min:.0} to {x_max:.0})")
    } else {
        String::new()
    };
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}: {}{}</text>"#,
        escape(&result.scenario),
        escape(&result.description),
        escape(&zoom)
    );
    grid(
        &mut svg,
        &rps_axes,
        "requests/s: offered (grey), ready capacity",
        rps_step,
    );
    grid(&mut svg, &replica_axes, "desired replicas", replica_step);

    // Time axis, under the bottom panel.
    let t_step = tick_step(x_max - x_min, 8.0);
    let mut t = (x_min / t_step).ceil() * t_step;
    while t <= x_max + 1e-9 {
        let x = rps_axes.x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#ccc"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{t}</text>"##,
            BOTTOM_PANEL.1,
            BOTTOM_PANEL.1 + 5.0,
            BOTTOM_PANEL.1 + 18.0
        );
        t += t_step;
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="12">seconds</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 8.0
    );

    // Offered load as a filled step area.
    let offered: Vec<(f64, f64)> = result
        .offered_rps
        .iter()
        .enumerate()
        .map(|(s, &v)| (s as f64, v))
        .collect();
    let _ = writeln!(
        svg,
        r##"<path d="{}H{:.1}V{:.1}H{:.1}Z" fill="#bbb" fill-opacity="0.6" stroke="none"/>"##,
        step_path(&rps_axes, &offered),
        rps_axes.x(x_max),
        rps_axes.y(0.0),
        rps_axes.x(x_min)
    );

    // The event marker.
    for axes in [&rps_axes, &replica_axes] {
        let x = axes.x(result.event_s);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#555" stroke-dasharray="4 3"/>"##,
            axes.top, axes.bottom
        );
    }

    for (i, system) in result.systems.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        // Series samples are taken at the end of each second.
        let capacity: Vec<(f64, f64)> = system
            .series
            .iter()
            .map(|p| (f64::from(p.t_s), p.capacity_rps))
            .collect();
        let replicas: Vec<(f64, f64)> = std::iter::once((0.0, f64::from(system.initial_replicas)))
            .chain(system.writes.iter().map(|w| (w.t_s, f64::from(w.replicas))))
            .collect();
        // Offsets of a pixel keep overlapping lines distinguishable.
        let offset = i as f64 * 1.2;
        for (axes, points) in [(&rps_axes, &capacity), (&replica_axes, &replicas)] {
            let _ = writeln!(
                svg,
                r#"<path d="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-opacity="0.9" transform="translate(0 {offset:.1})"/>"#,
                step_path(axes, points)
            );
        }
        let y = TOP_PANEL.0 + 20.0 + 22.0 * i as f64;
        let x = WIDTH - RIGHT + 15.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            x + 20.0,
            x + 26.0,
            y + 4.0,
            escape(&system.system)
        );
    }
    let y = TOP_PANEL.0 + 20.0 + 22.0 * result.systems.len() as f64;
    let x = WIDTH - RIGHT + 15.0;
    let _ = writeln!(
        svg,
        r##"<rect x="{x}" y="{}" width="20" height="10" fill="#bbb"/><text x="{}" y="{}" font-size="12">offered load</text>"##,
        y - 5.0,
        x + 26.0,
        y + 4.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::super::models::anchors;
    use super::super::report::run;
    use super::super::scenarios::standard_set;
    use super::*;

    #[test]
    fn ticks_are_nice_numbers() {
        assert_eq!(tick_step(1000.0, 5.0), 200.0);
        assert_eq!(tick_step(10.0, 4.0), 5.0);
        assert_eq!(tick_step(690.0, 8.0), 100.0);
        assert_eq!(tick_step(0.0, 5.0), 1.0);
    }

    #[test]
    fn chart_is_one_svg_with_a_line_pair_per_system_and_escaped_text() {
        let traces: Vec<_> = standard_set().unwrap().into_iter().take(1).collect();
        let mut comparison = run(&traces, &[1], &|t, p, s| Ok(anchors(t, p, s))).unwrap();
        let result = &mut comparison.scenarios[0];
        result.description = "a < b & c".into();
        let chart = svg(result, None);
        assert!(chart.starts_with("<svg"));
        assert!(chart.trim_end().ends_with("</svg>"));
        assert!(chart.contains("a &lt; b &amp; c"));
        // Two paths per system (capacity, replicas) plus the offered area.
        assert_eq!(chart.matches("<path").count(), 2 * result.systems.len() + 1);
        assert!(!chart.contains("NaN") && !chart.contains("inf"));
        let zoomed = svg(result, Some((20.0, 80.0)));
        assert!(zoomed.contains("seconds 20 to 80"));
        assert!(!zoomed.contains("NaN") && !zoomed.contains("inf"));
    }

    #[test]
    fn step_paths_start_from_the_value_before_the_window() {
        let axes = Axes {
            x_min: 10.0,
            x_max: 20.0,
            top: 0.0,
            bottom: 100.0,
            y_max: 10.0,
        };
        // Value 5 from t=0, 8 from t=15, 9 from t=30 (outside).
        let d = step_path(&axes, &[(0.0, 5.0), (15.0, 8.0), (30.0, 9.0)]);
        assert!(
            d.starts_with(&format!("M{:.1},{:.1}", axes.x(10.0), axes.y(5.0))),
            "{d}"
        );
        assert!(
            d.contains(&format!("H{:.1}V{:.1}", axes.x(15.0), axes.y(8.0))),
            "{d}"
        );
        assert!(!d.contains(&format!("V{:.1}", axes.y(9.0))), "{d}");
    }
}
