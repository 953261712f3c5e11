//! Aircall's answers to `GET /v1/calls/:id` and `GET /v1/calls`, read as the client reads them;
//! every call then goes through the import rules, the metadata document, its storage keys and
//! the job message. The checks live in the library (`aircall_ingest::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aircall_ingest::fuzzing::call_answer(data));
