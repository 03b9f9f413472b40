//! A standalone SVG of the planning picture: recent history of the whole panel, the
//! champion's forecast and each scenario, with axes and a legend.

use super::data::Panel;
use super::scenario::ScenarioResult;
use super::WEEK;

/// History shown before the forecast starts.
pub const HISTORY_DAYS: usize = 8 * WEEK;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 76.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 60.0;
const HISTORY_COLOR: &str = "#404040";
const BASELINE_COLOR: &str = "#1f77b4";
const SCENARIO_COLORS: [&str; 8] = [
    "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
];

/// `baseline` and every scenario's `daily` start the day after the panel ends.
pub fn svg(panel: &Panel, baseline: &[f64], scenarios: &[ScenarioResult]) -> String {
    let all = panel.aggregate_sales();
    let history = &all[all.len().saturating_sub(HISTORY_DAYS)..];
    let horizon = scenarios
        .iter()
        .map(|s| s.daily.len())
        .chain([baseline.len()])
        .max()
        .unwrap_or(0);
    let plot = Plot::new(history, baseline, scenarios, horizon);

    let mut out = String::with_capacity(16 * 1024);
    out.push_str(&format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <title>Demand forecast and what-if scenarios</title>\n\
         <rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>\n\
         <text x=\"{LEFT}\" y=\"28\" font-size=\"16\" font-weight=\"bold\">\
         Units per day, all series: last {} days and {} days ahead</text>\n",
        history.len(),
        horizon
    ));
    plot.axes(&mut out);

    let origin = history.len();
    plot.line(&mut out, history, 0, HISTORY_COLOR, 1.5, None);
    plot.line(&mut out, baseline, origin, BASELINE_COLOR, 2.5, None);
    for (i, s) in scenarios.iter().enumerate() {
        let color = SCENARIO_COLORS[i % SCENARIO_COLORS.len()];
        plot.line(&mut out, &s.daily, origin, color, 1.5, Some("6 3"));
    }

    let mut legend = vec![
        (
            format!("history (last {} days)", history.len()),
            HISTORY_COLOR,
            None,
        ),
        ("champion forecast".to_string(), BASELINE_COLOR, None),
    ];
    for (i, s) in scenarios.iter().enumerate() {
        let color = SCENARIO_COLORS[i % SCENARIO_COLORS.len()];
        legend.push((format!("scenario: {}", s.name), color, Some("6 3")));
    }
    let lx = WIDTH - RIGHT + 20.0;
    for (i, (label, color, dash)) in legend.iter().enumerate() {
        let y = TOP + 10.0 + 20.0 * i as f64;
        out.push_str(&format!(
            "<line x1=\"{lx}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"2.5\"{}/>\n\
             <text x=\"{}\" y=\"{}\">{}</text>\n",
            lx + 24.0,
            dash_attr(*dash),
            lx + 30.0,
            y + 4.0,
            escape(&truncate(label, 30))
        ));
    }
    out.push_str("</svg>\n");
    out
}

struct Plot {
    /// Points on the x axis: history days then forecast days.
    slots: usize,
    origin: usize,
    y_max: f64,
    y_step: f64,
}

impl Plot {
    fn new(
        history: &[f64],
        baseline: &[f64],
        scenarios: &[ScenarioResult],
        horizon: usize,
    ) -> Plot {
        let max = history
            .iter()
            .chain(baseline)
            .chain(scenarios.iter().flat_map(|s| &s.daily))
            .copied()
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let y_step = nice_step(max.max(1.0) * 1.05 / 5.0);
        Plot {
            slots: history.len() + horizon,
            origin: history.len(),
            y_max: (max.max(1.0) * 1.05 / y_step).ceil() * y_step,
            y_step,
        }
    }

    fn x(&self, slot: usize) -> f64 {
        let span = self.slots.saturating_sub(1).max(1) as f64;
        LEFT + (WIDTH - LEFT - RIGHT) * slot as f64 / span
    }

    fn y(&self, v: f64) -> f64 {
        let bottom = HEIGHT - BOTTOM;
        bottom - (bottom - TOP) * (v / self.y_max).clamp(0.0, 1.0)
    }

    fn axes(&self, out: &mut String) {
        let (x0, x1, y0) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM);
        let ticks = (self.y_max / self.y_step).round() as usize;
        for i in 0..=ticks {
            let v = self.y_step * i as f64;
            let y = self.y(v);
            out.push_str(&format!(
                "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>\n\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                x0 - 6.0,
                y + 4.0,
                format_units(v)
            ));
        }
        // Weekly ticks counted from the first forecast day (day 0).
        for slot in (0..self.slots).filter(|s| s.abs_diff(self.origin) % WEEK == 0) {
            let x = self.x(slot);
            let day = match slot as i64 - self.origin as i64 {
                0 => "0".to_string(),
                d => format!("{d:+}"),
            };
            out.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#000000\"/>\n\
                 <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{day}</text>\n",
                y0 + 5.0,
                y0 + 18.0
            ));
        }
        if self.origin > 0 && self.origin < self.slots {
            let x = (self.x(self.origin - 1) + self.x(self.origin)) / 2.0;
            out.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{y0}\" stroke=\"#808080\" stroke-dasharray=\"4 4\"/>\n\
                 <text x=\"{:.1}\" y=\"{}\" fill=\"#606060\">forecast</text>\n",
                x + 4.0,
                TOP + 12.0
            ));
        }
        out.push_str(&format!(
            "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#000000\"/>\n\
             <line x1=\"{x0}\" y1=\"{TOP}\" x2=\"{x0}\" y2=\"{y0}\" stroke=\"#000000\"/>\n\
             <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">days from forecast start</text>\n\
             <text x=\"18\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {:.1})\">units per day</text>\n",
            (x0 + x1) / 2.0,
            HEIGHT - 16.0,
            (TOP + y0) / 2.0,
            (TOP + y0) / 2.0
        ));
    }

    /// Draws `values` from slot `start`; non-finite values are left out.
    fn line(
        &self,
        out: &mut String,
        values: &[f64],
        start: usize,
        color: &str,
        width: f64,
        dash: Option<&str>,
    ) {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| format!("{:.1},{:.1}", self.x(start + i), self.y(*v)))
            .collect();
        if points.is_empty() {
            return;
        }
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\"{} points=\"{}\"/>\n",
            dash_attr(dash),
            points.join(" ")
        ));
    }
}

fn dash_attr(dash: Option<&str>) -> String {
    dash.map(|d| format!(" stroke-dasharray=\"{d}\""))
        .unwrap_or_default()
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn format_units(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars - 1).collect();
        t.push('…');
        t
    }
}

/// XML text and attribute escaping.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newlines are not allowed in XML 1.0.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::showcase::science::data::{generate, PanelSpec};
    use crate::domain::showcase::science::models::{FittedModel, ModelKind};
    use crate::domain::showcase::science::scenario::{default_scenarios, simulate};
    use crate::domain::showcase::science::Never;
    use quick_xml::escape::resolve_predefined_entity;
    use quick_xml::events::Event;
    use quick_xml::Reader;
    use std::collections::BTreeMap;

    /// Parses `svg` with a real XML parser (which also checks that start and end tags
    /// match); returns the root element, element counts and the texts of elements.
    fn parse(svg: &str) -> (String, BTreeMap<String, usize>, Vec<String>) {
        let mut reader = Reader::from_str(svg);
        let mut root = None;
        let mut counts = BTreeMap::new();
        let mut texts = Vec::new();
        let mut text = String::new();
        loop {
            match reader.read_event() {
                Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                    let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                    for a in e.attributes() {
                        a.expect("well-formed attribute")
                            .unescape_value()
                            .expect("escapes");
                    }
                    root.get_or_insert(name.clone());
                    *counts.entry(name).or_insert(0) += 1;
                    text.clear();
                }
                Ok(Event::Text(t)) => text.push_str(&t.decode().unwrap()),
                Ok(Event::GeneralRef(r)) => {
                    let name = r.decode().unwrap();
                    let resolved = resolve_predefined_entity(&name).expect("known entity");
                    text.push_str(resolved);
                }
                Ok(Event::End(_)) => {
                    if !text.trim().is_empty() {
                        texts.push(std::mem::take(&mut text));
                    }
                    text.clear();
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("invalid XML at {}: {e}", reader.buffer_position()),
            }
        }
        (root.expect("a root element"), counts, texts)
    }

    fn demo_chart() -> String {
        let panel = generate(&PanelSpec::default());
        let model = FittedModel::fit(ModelKind::MovingAverage, &panel, panel.days, &Never);
        let mut scenarios = simulate(&model, &panel, 28, &default_scenarios(), &Never);
        scenarios[3].name = "<\"big\" & 'bold'>".into();
        svg(&panel, &scenarios[0].daily.clone(), &scenarios)
    }

    #[test]
    fn chart_is_valid_svg_with_all_parts() {
        let svg = demo_chart();
        let (root, counts, texts) = parse(&svg);
        assert_eq!(root, "svg");
        assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
        // History, champion forecast and four scenarios.
        assert_eq!(counts["polyline"], 6);
        assert!(
            texts.iter().any(|t| t == "scenario: <\"big\" & 'bold'>"),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t == "champion forecast"));
        assert!(texts.iter().any(|t| t == "-56") && texts.iter().any(|t| t == "+21"));
        assert!(svg.contains("&lt;&quot;big&quot; &amp; &apos;bold&apos;&gt;"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn chart_is_deterministic() {
        assert_eq!(demo_chart(), demo_chart());
    }

    #[test]
    fn degenerate_inputs_still_give_valid_svg() {
        let empty = Panel {
            series: vec![],
            days: 0,
        };
        let weird = ScenarioResult {
            name: "ctrl\u{1}char".into(),
            total_units: f64::NAN,
            delta_pct: 0.0,
            daily: vec![f64::NAN, f64::INFINITY, -5.0, 3.0],
        };
        for (baseline, scenarios) in [
            (vec![], vec![]),
            (vec![f64::NAN], vec![]),
            (vec![1.0, 2.0], vec![weird.clone()]),
        ] {
            let svg = svg(&empty, &baseline, &scenarios);
            assert_eq!(parse(&svg).0, "svg");
            assert!(!svg.contains("NaN"));
        }
        let tiny = generate(&PanelSpec {
            seed: 1,
            series: 1,
            days: 1,
        });
        assert_eq!(parse(&svg(&tiny, &[], &[weird])).0, "svg");
    }

    #[test]
    fn helpers() {
        assert_eq!(nice_step(0.21), 0.25);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(170.0), 200.0);
        assert_eq!(nice_step(1000.0), 1000.0);
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
