//! Any `ListRuns` filter from a client: parsing never panics, and what parses prints as
//! canonical text (no deeper than the input) that parses back to the same filter.
#![no_main]
use libfuzzer_sys::fuzz_target;
use registry_svc::domain::runs::filter;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(Some(f)) = filter::parse(text) {
            let canonical = f.to_string();
            // Escapes can make the canonical text longer than the limit the input met.
            if canonical.len() <= filter::MAX_FILTER_BYTES {
                assert_eq!(filter::parse(&canonical).ok(), Some(Some(f)), "{canonical}");
            }
        }
    }
});
