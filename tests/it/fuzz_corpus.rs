//! The fuzz targets' committed inputs, replayed without libFuzzer: every file of
//! `fuzz/corpus/{target}/` (real-shaped payloads) and of `fuzz/regressions/{target}/` (inputs
//! that once broke a check) goes through the same check as its fuzz target
//! (`aircall_ingest::fuzzing`), so CI, which does not run cargo-fuzz, still holds them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use aircall_ingest::fuzzing;

/// What a fuzz target checks of one input (it panics when a promise breaks).
type Check = fn(&[u8]);

/// Each fuzz target and its check.
const TARGETS: [(&str, Check); 3] = [
    ("envelope", fuzzing::envelope),
    ("call", fuzzing::call_answer),
    ("admin_bodies", fuzzing::admin_bodies),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_fuzz_input_passes_its_targets_checks() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (target, check) in TARGETS {
        let corpus = files(&fuzz.join("corpus").join(target));
        assert!(
            corpus.len() >= 5,
            "fuzz/corpus/{target} holds the seed corpus"
        );
        let regressions = files(&fuzz.join("regressions").join(target));
        for file in corpus.iter().chain(&regressions) {
            let data = std::fs::read(file).unwrap();
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{target}: {}: {message}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
