//! Webhook bodies as an attacker might send them: parsing, the token check and the envelope
//! never panic, whatever the bytes; a snapshot goes on through the import checks. The checks
//! live in the library (`aircall_ingest::fuzzing`), where the corpus regression test runs them
//! too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aircall_ingest::fuzzing::envelope(data));
