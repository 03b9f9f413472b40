//! Any text: parsing never panics, and whatever parses formats back to the same text.
#![no_main]
use capstan_proto::artifact_uri::ArtifactUri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(uri) = ArtifactUri::parse(text) {
            assert_eq!(uri.to_string(), text);
            let again = ArtifactUri::new(uri.namespace(), uri.model_type(), uri.key(), uri.ext()).unwrap();
            assert_eq!(again, uri);
        }
    }
});
