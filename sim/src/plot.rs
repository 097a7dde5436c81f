//! A hand-written SVG of convergence over time: on top, the fraction of live
//! nodes whose presence view equals the truth; below, one row per node (green:
//! agrees, red: differs, grey: crashed); faults as labelled vertical lines.

use std::fmt::Write;

use crate::report::Report;
use crate::world::fmt_t;

const W: f64 = 1000.0;
const LEFT: f64 = 60.0;
const TOP_H: f64 = 160.0;

/// Renders the report's convergence samples as an SVG document.
pub fn svg(r: &Report) -> String {
    let rows = r.nodes.min(200);
    let row_h = (400.0 / rows.max(1) as f64).clamp(1.0, 14.0);
    let h = TOP_H + 60.0 + rows as f64 * row_h + 40.0;
    let end = r.virtual_time.as_secs_f64().max(1e-3);
    let x = |t: f64| LEFT + (W - LEFT - 20.0) * t / end;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" font-family="monospace" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="16">{} — {} nodes, seed {} — fraction of live nodes agreeing with the truth</text>"#,
        r.scenario, r.nodes, r.seed
    );
    // Axes of the top panel.
    let y = |f: f64| 30.0 + (TOP_H - 30.0) * (1.0 - f);
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#,
        y(0.0),
        W - 20.0,
        y(0.0)
    );
    for f in [0.0, 0.5, 1.0] {
        let _ = writeln!(
            s,
            r##"<text x="5" y="{:.1}">{f:.1}</text><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            y(f) + 4.0,
            y(f),
            W - 20.0,
            y(f)
        );
    }
    let mut pts = String::new();
    for sm in &r.samples {
        let live = sm.agree.iter().flatten().count();
        let ok = sm.agree.iter().flatten().filter(|a| **a).count();
        let f = if live == 0 {
            1.0
        } else {
            ok as f64 / live as f64
        };
        let _ = write!(pts, "{:.1},{:.1} ", x(sm.at.as_secs_f64()), y(f));
    }
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="{pts}"/>"#
    );
    // Per-node rows.
    let top = TOP_H + 40.0;
    let step = r.nodes.div_ceil(rows.max(1)).max(1);
    for (row, node) in (0..r.nodes).step_by(step).enumerate() {
        let ry = top + row as f64 * row_h;
        if row_h >= 8.0 {
            let _ = writeln!(
                s,
                r#"<text x="5" y="{:.1}">n{node}</text>"#,
                ry + row_h - 2.0
            );
        }
        for (k, sm) in r.samples.iter().enumerate() {
            let t0 = sm.at.as_secs_f64();
            let t1 = r.samples.get(k + 1).map_or(end, |n| n.at.as_secs_f64());
            let color = match sm.agree.get(node).copied().flatten() {
                Some(true) => "#4caf50",
                Some(false) => "#e53935",
                None => "#bdbdbd",
            };
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{ry:.1}" width="{:.2}" height="{:.1}" fill="{color}"/>"#,
                x(t0),
                (x(t1) - x(t0)).max(0.5),
                (row_h - 0.5).max(0.5)
            );
        }
    }
    for (t, label) in r.faults.iter().take(60) {
        let fx = x(t.as_secs_f64());
        let _ = writeln!(
            s,
            r#"<line x1="{fx:.1}" y1="30" x2="{fx:.1}" y2="{:.0}" stroke="black" stroke-dasharray="3,3" opacity="0.5"><title>{} {}</title></line>"#,
            h - 30.0,
            fmt_t(*t),
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{:.0}">0s</text><text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
        h - 12.0,
        W - 20.0,
        h - 12.0,
        fmt_t(r.virtual_time)
    );
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
