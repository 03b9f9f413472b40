//! The benchmarks' report helpers: the dates they print and the docs section they rewrite.

use capstan_tests::report::{splice, utc, PIPELINE_BEGIN as BEGIN, PIPELINE_END as END};

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
