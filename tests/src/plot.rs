//! Line charts for the growth benchmarks, written as SVG next to `docs/benchmarks.md`, so
//! that a curve's shape (flat, log n, linear) is seen at a glance. A few dozen lines of
//! SVG need no plotting library, and no fonts: the reader's browser draws the text.

use std::{fmt::Write as _, path::Path};

use anyhow::Context;

/// One curve: its name in the legend and its (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Sizes such as 10k, 100k, 1M read best on a logarithmic axis (a log n curve is then
    /// a straight line, a linear one bends up).
    pub log_x: bool,
    pub series: Vec<Series>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

impl Chart {
    pub fn svg(&self) -> String {
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let xs = |f: fn(f64, f64) -> f64, init| points().map(|p| self.x_of(p.0)).fold(init, f);
        let (x_min, x_max) = (xs(f64::min, f64::INFINITY), xs(f64::max, f64::NEG_INFINITY));
        let y_max = points().map(|p| p.1).fold(0.0, f64::max);
        let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
            (x_min, x_max)
        } else {
            (0.0, 1.0)
        };
        let y_top = nice_ceiling(y_max);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let px = |x: f64| LEFT + (self.x_of(x) - x_min) / (x_max - x_min) * plot_w;
        let py = |y: f64| TOP + plot_h - y / y_top * plot_h;

        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="14" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            escape(&self.title)
        );
        // Axes, then the y grid (five steps) and the x ticks (the measured sizes).
        let _ = write!(
            s,
            r#"<path d="M{LEFT},{TOP}V{}H{}" stroke="black" fill="none"/>"#,
            TOP + plot_h,
            LEFT + plot_w
        );
        for i in 0..=5 {
            let y = y_top * f64::from(i) / 5.0;
            let (right, at, label_x) = (LEFT + plot_w, py(y), LEFT - 6.0);
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" x2="{right}" y1="{at}" y2="{at}" stroke="#ddd"/><text x="{label_x}" y="{}" text-anchor="end">{}</text>"##,
                at + 4.0,
                short(y)
            );
        }
        let mut ticks: Vec<f64> = points().map(|p| p.0).collect();
        ticks.sort_by(f64::total_cmp);
        ticks.dedup();
        for x in ticks {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                px(x),
                TOP + plot_h + 18.0,
                short(x)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text transform="translate(16,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 10.0,
            escape(&self.x_label),
            TOP + plot_h / 2.0,
            escape(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let path: Vec<String> = series
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline points="{}" stroke="{color}" stroke-width="2" fill="none"/>"#,
                path.join(" ")
            );
            for &(x, y) in &series.points {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(x),
                    py(y)
                );
            }
            let ly = TOP + 10.0 + 18.0 * i as f64;
            let lx = LEFT + plot_w + 12.0;
            let _ = write!(
                s,
                r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
                lx + 18.0,
                lx + 24.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes the chart to `path` (creating its folder) and says where.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.svg())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
        Ok(())
    }

    fn x_of(&self, x: f64) -> f64 {
        if self.log_x {
            x.max(f64::MIN_POSITIVE).log10()
        } else {
            x
        }
    }
}

/// The smallest 1, 2 or 5 × 10^k at or above `y` (an axis that ends on a round number).
fn nice_ceiling(y: f64) -> f64 {
    if y <= 0.0 || !y.is_finite() {
        return 1.0;
    }
    let base = 10f64.powf(y.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * base)
        .find(|&v| v >= y)
        .unwrap_or(10.0 * base)
}

/// 1500 → "1.5k", 1000000 → "1M", 0.25 → "0.25".
fn short(v: f64) -> String {
    let (scaled, suffix) = match v.abs() {
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{scaled:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
