//! The planning briefing: a short Markdown report a person can act on, built only from
//! the champion's backtest, the scenario results and the retrieved runbook passages.

use super::knowledge::Passage;
use super::scenario::ScenarioResult;

/// Longest runbook excerpt quoted per passage, in characters.
const EXCERPT_CHARS: usize = 240;
/// Bias within ±2 % counts as unbiased.
const UNBIASED: f64 = 0.02;

pub fn render(
    champion: &str,
    wape: f64,
    mae: f64,
    bias: f64,
    scenarios: &[ScenarioResult],
    passages: &[Passage],
) -> String {
    let mut out = String::from("# Demand planning briefing\n\n## Forecast\n\n");
    let bias_note = if !bias.is_finite() {
        "unknown"
    } else if bias.abs() < UNBIASED {
        "essentially unbiased"
    } else if bias > 0.0 {
        "forecasts run high"
    } else {
        "forecasts run low"
    };
    out.push_str(&format!(
        "The champion model is `{}`. In a rolling-origin backtest its forecasts missed by \
         {} of units sold (WAPE), {} units per series and day (MAE), with a bias of {} \
         ({bias_note}).\n\n",
        one_line(champion),
        percent(wape, false),
        number(mae, 2),
        percent(bias, true),
    ));

    out.push_str("## What-if scenarios\n\n");
    let horizon = scenarios.iter().map(|s| s.daily.len()).max().unwrap_or(0);
    if scenarios.is_empty() {
        out.push_str("No scenarios were simulated.\n\n");
    } else {
        out.push_str(&format!(
            "Units over the next {horizon} days, all series:\n\n\
             | Scenario | Units | vs. baseline |\n|---|---:|---:|\n"
        ));
        for s in scenarios {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                one_line(&s.name).replace('|', "\\|"),
                number(s.total_units, 0),
                percent(s.delta_pct / 100.0, true)
            ));
        }
        out.push('\n');
        let finite = || {
            scenarios
                .iter()
                .filter(|s| s.total_units.is_finite() && s.delta_pct.is_finite())
        };
        let most = finite().fold(None, |b: Option<&ScenarioResult>, s| match b {
            Some(b) if b.total_units >= s.total_units => Some(b),
            _ => Some(s),
        });
        let least = finite().fold(None, |b: Option<&ScenarioResult>, s| match b {
            Some(b) if b.total_units <= s.total_units => Some(b),
            _ => Some(s),
        });
        if let (Some(most), Some(least)) = (most, least) {
            out.push_str(&format!(
                "- Most units: **{}** ({} vs. baseline); fewest: **{}** ({}).\n",
                one_line(&most.name),
                percent(most.delta_pct / 100.0, true),
                one_line(&least.name),
                percent(least.delta_pct / 100.0, true)
            ));
        }
        out.push_str("- Units only: weigh price changes against margin before acting.\n\n");
    }

    out.push_str("## Operational notes\n\n");
    if passages.is_empty() {
        out.push_str("No runbook passages were retrieved.\n");
    } else {
        for (i, p) in passages.iter().enumerate() {
            out.push_str(&format!(
                "{}. **{}** (relevance {:.2}): {}\n",
                i + 1,
                one_line(&p.title),
                p.score,
                excerpt(&p.text)
            ));
        }
    }
    out
}

/// Whitespace (newlines included) collapsed to single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn excerpt(text: &str) -> String {
    let flat = one_line(text);
    if flat.chars().count() <= EXCERPT_CHARS {
        return flat;
    }
    let cut: String = flat.chars().take(EXCERPT_CHARS).collect();
    // End on a word boundary when there is one.
    let cut = cut
        .rsplit_once(' ')
        .map_or(cut.as_str(), |(head, _)| head)
        .to_string();
    format!("{cut}…")
}

/// `fraction` as a percentage with one decimal ("28.0 %", "+1.5 %"); "n/a" if not finite.
fn percent(fraction: f64, signed: bool) -> String {
    if !fraction.is_finite() {
        return "n/a".into();
    }
    let v = fraction * 100.0;
    if signed {
        format!("{v:+.1} %")
    } else {
        format!("{v:.1} %")
    }
}

/// A number with thousands separators ("12,345.67"); "n/a" if not finite.
fn number(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = s
        .split_once('.')
        .map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if v < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &str, total: f64, delta: f64) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            total_units: total,
            delta_pct: delta,
            daily: vec![total / 28.0; 28],
        }
    }

    fn passage(title: &str, text: &str, score: f32) -> Passage {
        Passage {
            title: title.into(),
            text: text.into(),
            score,
        }
    }

    #[test]
    fn briefing_reports_metrics_scenarios_and_passages() {
        let scenarios = [
            scenario("baseline", 20_000.0, 0.0),
            scenario("price_minus_10pct", 23_400.0, 17.0),
            scenario("price_plus_10pct", 17_400.0, -13.0),
            scenario("promotion", 36_000.0, 80.0),
        ];
        let passages = [
            passage(
                "Alias rollback › Verify",
                "`GetAlias` shows the expected run.\n- history",
                0.61,
            ),
            passage("On-call first steps", &"word ".repeat(100), 0.2),
        ];
        let b = render(
            "moving_average",
            0.2802,
            18.3012,
            -0.0104,
            &scenarios,
            &passages,
        );
        for want in [
            "# Demand planning briefing",
            "`moving_average`",
            "28.0 % of units sold (WAPE)",
            "18.30 units per series and day",
            "bias of -1.0 % (essentially unbiased)",
            "next 28 days",
            "| promotion | 36,000 | +80.0 % |",
            "| price_plus_10pct | 17,400 | -13.0 % |",
            "Most units: **promotion** (+80.0 % vs. baseline); fewest: **price_plus_10pct** (-13.0 %)",
            "1. **Alias rollback › Verify** (relevance 0.61): `GetAlias` shows the expected run. - history",
            "2. **On-call first steps** (relevance 0.20): word word",
        ] {
            assert!(b.contains(want), "missing {want:?} in\n{b}");
        }
        assert!(b.lines().last().unwrap().ends_with("word…"));
        assert_eq!(
            b,
            render(
                "moving_average",
                0.2802,
                18.3012,
                -0.0104,
                &scenarios,
                &passages
            )
        );
    }

    #[test]
    fn empty_and_odd_inputs_still_render() {
        let b = render("x\ny", f64::NAN, f64::INFINITY, 0.5, &[], &[]);
        assert!(
            b.contains("`x y`")
                && b.contains("n/a of units")
                && b.contains("+50.0 % (forecasts run high)")
        );
        assert!(
            b.contains("No scenarios were simulated.")
                && b.contains("No runbook passages were retrieved.")
        );
        let odd = [
            scenario("a|b", f64::NAN, f64::NAN),
            scenario("c", 10.0, -5.0),
        ];
        let b = render("m", 0.1, 1.0, -0.1, &odd, &[]);
        assert!(
            b.contains("| a\\|b | n/a | n/a |") && b.contains("forecasts run low"),
            "{b}"
        );
        assert!(b.contains("Most units: **c**"));
    }

    #[test]
    fn number_formatting() {
        assert_eq!(number(1234567.891, 2), "1,234,567.89");
        assert_eq!(number(999.0, 0), "999");
        assert_eq!(number(1000.0, 0), "1,000");
        assert_eq!(number(-12345.0, 0), "-12,345");
        assert_eq!(number(-0.001, 1), "0.0");
        assert_eq!(percent(0.123, true), "+12.3 %");
    }
}
