//! The jobs page's chart of a job's last runs, drawn on the server as inline SVG: a bar per run
//! for its duration (coloured by its status) and a line for its items per second, each on its
//! own scale. No script, no library.

use std::fmt::Write as _;

use super::html::{Esc, duration};

/// One finished run in the chart.
#[derive(Debug, Clone)]
pub(super) struct RunPoint {
    /// The execution.
    pub(super) id: i64,
    /// Its status (`COMPLETED`, ...).
    pub(super) status: String,
    /// Seconds from start to end.
    pub(super) seconds: f64,
    /// Items read per second.
    pub(super) items_per_sec: f64,
}

const W: f64 = 320.0;
const H: f64 = 90.0;
const TOP: f64 = 14.0;

/// The chart of `runs`, oldest first; a note when there is none.
pub(super) fn runs_chart(job: &str, runs: &[RunPoint]) -> String {
    if runs.is_empty() {
        return "<p class=\"muted\">No finished run yet.</p>".to_owned();
    }
    let n = runs.len() as f64;
    let slot = W / n;
    let bar = (slot * 0.7).max(1.0);
    let max_secs = runs
        .iter()
        .map(|r| r.seconds)
        .fold(0.0, f64::max)
        .max(0.001);
    let max_rate = runs
        .iter()
        .map(|r| r.items_per_sec)
        .fold(0.0, f64::max)
        .max(0.001);
    let plot = H - TOP;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{} last {} runs: duration and items per second\">",
        Esc(job),
        runs.len()
    );
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"10\" class=\"axis\">max {}</text><text x=\"{W}\" y=\"10\" class=\"axis rate\" text-anchor=\"end\">max {:.1} items/s</text>",
        Esc(&duration(max_secs)),
        max_rate
    );
    let mut line = Vec::with_capacity(runs.len());
    for (k, r) in runs.iter().enumerate() {
        let x = k as f64 * slot + (slot - bar) / 2.0;
        let h = (r.seconds / max_secs * plot).max(1.0);
        let _ = write!(
            svg,
            "<a href=\"/ui/executions/{id}\"><rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" class=\"bar s-{}\"><title>#{id} {}: {}, {:.1} items/s</title></rect></a>",
            H - h,
            Esc(&r.status.to_ascii_lowercase()),
            Esc(&r.status),
            Esc(&duration(r.seconds)),
            r.items_per_sec,
            id = r.id,
        );
        let cx = k as f64 * slot + slot / 2.0;
        let cy = H - r.items_per_sec / max_rate * plot;
        line.push(format!("{cx:.1},{cy:.1}"));
    }
    let _ = write!(
        svg,
        "<line class=\"base\" x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\"/><polyline class=\"rate\" points=\"{}\"/></svg>",
        line.join(" ")
    );
    svg.push_str(
        "<p class=\"legend\"><span class=\"key bar-key\"></span>duration <span class=\"key rate-key\"></span>items/s</p>",
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_per_run_and_one_line() {
        let runs = [
            RunPoint {
                id: 1,
                status: "COMPLETED".into(),
                seconds: 2.0,
                items_per_sec: 100.0,
            },
            RunPoint {
                id: 2,
                status: "FAILED".into(),
                seconds: 4.0,
                items_per_sec: 50.0,
            },
        ];
        let svg = runs_chart("<job>", &runs);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("&lt;job&gt;"), "{svg}");
        assert!(svg.contains("/ui/executions/2"), "{svg}");
        assert!(runs_chart("j", &[]).contains("No finished run"));
    }
}
