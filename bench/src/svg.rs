//! Hand-written SVG line charts: a logarithmic x axis (number of
//! Services), a linear or logarithmic y axis, one line per series.

use std::fmt::Write as _;

pub(crate) struct Series {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    /// (x, y), x > 0; points with y <= 0 are skipped on a log y axis.
    pub points: Vec<(f64, f64)>,
}

pub(crate) struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_y: bool,
    pub series: Vec<Series>,
}

const W: f64 = 720.0;
const H: f64 = 440.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 58.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// 1, 2, 5 × 10^k steps giving about `target` ticks over [0, max].
fn linear_ticks(max: f64, target: usize) -> Vec<f64> {
    if max <= 0.0 {
        return vec![0.0, 1.0];
    }
    let raw = max / target as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut ticks = Vec::new();
    let mut v = 0.0;
    while v < max + step * 0.999 {
        ticks.push(v);
        v += step;
    }
    ticks
}

fn label_number(v: f64) -> String {
    if v >= 1000.0 && (v / 1000.0).fract() == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

impl Chart<'_> {
    pub(crate) fn render(&self) -> String {
        let pts = self
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| *x > 0.0 && (!self.log_y || *y > 0.0));
        let (mut x_max, mut y_min, mut y_max) = (10.0f64, f64::INFINITY, 0.0f64);
        for (x, y) in pts {
            x_max = x_max.max(*x);
            y_min = y_min.min(*y);
            y_max = y_max.max(*y);
        }
        if !y_min.is_finite() {
            y_min = 1.0;
        }
        let x_dec = x_max.log10().ceil().max(1.0);
        let (y_lo, y_hi, y_ticks) = if self.log_y {
            let lo = y_min.log10().floor();
            let hi = y_max.log10().ceil().max(lo + 1.0);
            let ticks = (lo as i32..=hi as i32)
                .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
                .filter(|t| t.log10() <= hi + 1e-9)
                .collect();
            (lo, hi, ticks)
        } else {
            let ticks = linear_ticks(y_max * 1.05, 6);
            (0.0, *ticks.last().unwrap_or(&1.0), ticks)
        };
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let sx = |x: f64| LEFT + (x.max(1.0).log10() / x_dec) * pw;
        let sy = |y: f64| {
            let f = if self.log_y {
                (y.log10() - y_lo) / (y_hi - y_lo)
            } else {
                y / y_hi
            };
            TOP + ph - f * ph
        };

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" font-size="15" font-weight="bold">{}</text>"#,
            LEFT,
            esc(self.title)
        );
        // Grid and ticks.
        for d in 0..=(x_dec as i32) {
            let x = sx(10f64.powi(d));
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                TOP + ph
            );
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                TOP + ph + 18.0,
                label_number(10f64.powi(d))
            );
        }
        for t in &y_ticks {
            let y = sy(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
                LEFT + pw
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                label_number(*t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 14.0,
            esc(self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            esc(self.y_label)
        );
        // Series and legend.
        for (i, ser) in self.series.iter().enumerate() {
            let points: Vec<(f64, f64)> = ser
                .points
                .iter()
                .filter(|(x, y)| *x > 0.0 && (!self.log_y || *y > 0.0))
                .map(|(x, y)| (sx(*x), sy(*y)))
                .collect();
            let dash = if ser.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            if points.len() > 1 {
                let path: Vec<String> = points
                    .iter()
                    .map(|(x, y)| format!("{x:.1},{y:.1}"))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                    path.join(" "),
                    ser.color
                );
            }
            for (x, y) in &points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{}"/>"#,
                    ser.color
                );
            }
            let ly = TOP + 10.0 + i as f64 * 20.0;
            let lx = LEFT + pw + 16.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"#,
                lx + 26.0,
                ser.color
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}">{}</text>"#,
                lx + 32.0,
                ly + 4.0,
                esc(&ser.label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_and_axis() {
        let chart = Chart {
            title: "t <1>",
            x_label: "Services",
            y_label: "µs",
            log_y: false,
            series: vec![Series {
                label: "Ferry".into(),
                color: "#1f77b4",
                dashed: true,
                points: vec![(1.0, 40.0), (1000.0, 41.0), (100_000.0, 42.0)],
            }],
        };
        let svg = chart.render();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains(">100k<"));
        assert!(svg.contains("stroke-dasharray"));
    }

    #[test]
    fn ticks() {
        assert_eq!(
            linear_ticks(100.0, 5),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(label_number(30000.0), "30k");
    }
}
