//! Any `authorization` header from a client: reading the unverified issuer and verifying
//! the token never panic, and nothing but a token signed with the key is accepted.
#![no_main]
use std::sync::OnceLock;

use capstan_server::auth::Verifier;
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = std::str::from_utf8(data) {
        let verifier = Verifier::hs256(b"fuzzing-key-that-no-input-is-signed-with");
        // Random bytes are never a token signed with our key, with or without the scheme.
        for header in [header.to_string(), format!("Bearer {header}")] {
            let verdict = runtime().block_on(verifier.verify(Some(&header)));
            assert!(verdict.is_err(), "accepted {header:?}");
        }
    }
});
