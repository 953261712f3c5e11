//! The bodies of the admin requests that take one (connect, credentials, paying users, dead
//! letter replay), read and checked as the handlers do. The checks live in the library
//! (`aircall_ingest::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| aircall_ingest::fuzzing::admin_bodies(data));
