//! What the benchmarks write: JSON results and the pipeline section of docs/benchmarks.md.

use std::path::Path;

use anyhow::{bail, Context};

/// The markers around the section `pipeline_bench` rewrites in docs/benchmarks.md.
pub const PIPELINE_BEGIN: &str = "<!-- pipeline:begin -->";
pub const PIPELINE_END: &str = "<!-- pipeline:end -->";

/// Writes a benchmark's JSON results to `path` (creating its folder) and says where.
pub fn write_results(path: &Path, results: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(results)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("\nwrote {}", path.display());
    Ok(())
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time (civil-from-days, proleptic Gregorian).
pub fn utc(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// Replaces the text between the markers of `path` with `section` (or appends it).
pub fn splice(path: &Path, section: &str) -> anyhow::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let new = match (old.find(PIPELINE_BEGIN), old.find(PIPELINE_END)) {
        (Some(b), Some(e)) if b < e => {
            let rest = old[e + PIPELINE_END.len()..].trim_start_matches('\n');
            format!("{}{section}{rest}", &old[..b])
        }
        (None, None) if old.trim().is_empty() => section.to_string(),
        (None, None) => format!("{}\n\n{section}", old.trim_end()),
        _ => bail!(
            "{} has a broken pipeline section (markers {PIPELINE_BEGIN} / {PIPELINE_END})",
            path.display()
        ),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, new).with_context(|| format!("cannot write {}", path.display()))
}
