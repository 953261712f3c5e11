//! Webhook bodies as an attacker might send them: parsing, the token check and the envelope
//! must never panic, whatever the bytes.
#![no_main]

use std::sync::OnceLock;

use aircall_ingest::config::{Mode, Settings};
use aircall_ingest::crypto::Keys;
use aircall_ingest::intake::envelope;
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static (Keys, [u8; 32]) {
    static KEYS: OnceLock<(Keys, [u8; 32])> = OnceLock::new();
    KEYS.get_or_init(|| {
        let settings = Settings { mode: Mode::Development, ..Settings::default() };
        let keys = Keys::derive(&settings.secrets().expect("development secrets").secret_key);
        let fingerprint = keys.fingerprint("df76g76dpziygs567f0");
        (keys, fingerprint)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = envelope::parse(data) else { return };
    let (keys, fingerprint) = keys();
    if let Some(token) = body.token() {
        let _ = keys.token_matches(&token, fingerprint);
    }
    let Ok(envelope) = body.envelope() else { return };
    let _ = envelope.call_id();
    if let Some(call) = envelope.snapshot() {
        // A snapshot must survive the trip through a job message.
        let text = serde_json::to_vec(&call).expect("a call serializes");
        let _: aircall_ingest::aircall::Call = serde_json::from_slice(&text).expect("and reads back");
    }
});
