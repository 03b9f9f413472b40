//! The benchmarks' report helpers: the dates they print, the docs section they rewrite and
//! the charts they draw.

use capstan_tests::{
    plot::{Chart, Series},
    report::{splice, utc, PIPELINE_BEGIN as BEGIN, PIPELINE_END as END},
};

#[test]
fn utc_formats_civil_dates() {
    assert_eq!(utc(0), "1970-01-01 00:00 UTC");
    assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
    assert_eq!(utc(1_795_294_919), "2026-11-21 21:01 UTC");
}

#[test]
fn splice_replaces_only_the_pipeline_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("benchmarks.md");
    let section = |x: &str| format!("{BEGIN}\n## Pipeline\n{x}\n{END}\n");
    splice(&path, &section("one")).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), section("one"));
    std::fs::write(
        &path,
        format!("# Registry\n\ntext\n\n{}tail\n", section("one")),
    )
    .unwrap();
    splice(&path, &section("two")).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("# Registry\n\ntext\n\n{}tail\n", section("two"))
    );
    std::fs::write(&path, "# Registry only\n").unwrap();
    splice(&path, &section("three")).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("# Registry only\n\n{}", section("three"))
    );
    std::fs::write(&path, format!("x {END} y {BEGIN}")).unwrap();
    assert!(splice(&path, &section("four")).is_err());
}

#[test]
fn charts_put_every_point_on_round_axes() {
    let chart = Chart {
        title: "p99 <by> size".into(),
        x_label: "runs".into(),
        y_label: "ms".into(),
        log_x: true,
        series: vec![
            Series {
                name: "sqlite".into(),
                points: vec![(10_000.0, 3.0), (100_000.0, 9.5), (1_000_000.0, 17.0)],
            },
            Series {
                name: "postgres".into(),
                points: vec![(10_000.0, 1.0), (1_000_000.0, 2.5)],
            },
        ],
    };
    let svg = chart.svg();
    assert!(
        svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
        "{svg}"
    );
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert_eq!(svg.matches("<circle").count(), 5);
    // The y axis ends on the round number above the largest value; x ticks are the sizes.
    for label in [">20<", ">10k<", ">100k<", ">1M<", ">sqlite<", ">postgres<"] {
        assert!(svg.contains(label), "{label} missing from {svg}");
    }
    assert!(
        svg.contains("p99 &lt;by&gt; size"),
        "title not escaped: {svg}"
    );
    // On a log axis 10k, 100k and 1M are equally spaced.
    let xs: Vec<f64> = svg
        .split("<circle cx=\"")
        .skip(1)
        .take(3)
        .map(|c| c.split('"').next().unwrap().parse().unwrap())
        .collect();
    assert!(((xs[1] - xs[0]) - (xs[2] - xs[1])).abs() < 0.2, "{xs:?}");
}
