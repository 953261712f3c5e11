//! The chaos run's judgment: the simulator's truth against the files stored, the events
//! announced and the dead letters; and the report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aircall_ingest::config::StorageSettings;
use aircall_ingest::import::job::CallImported;
use aircall_ingest::import::metadata::CallMetadata;
use aircall_ingest::import::storage::Storage;
use aircall_ingest::sim::{AudioKind, CallTruth, audio_sha256};

use super::run::{FaultRecord, Run};
use super::{MAX_RECORDING_BYTES, Plan, WINDOW_S};
use crate::helpers::{amqp, queue_depth};
impl Run {
    /// `call imported` lines per call id in the workers' logs.
    fn imports_logged(&self) -> BTreeMap<u64, usize> {
        let mut imports = BTreeMap::new();
        for worker in &self.workers {
            let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
            for line in log.lines() {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if entry["message"] == "call imported"
                    && let Some(id) = entry["span"]["call_id"].as_u64()
                {
                    *imports.entry(id).or_default() += 1;
                }
            }
        }
        imports
    }

    /// Compares the truth with the files, the announcements and the dead letters.
    pub(super) async fn judge(&self, required_s: i64) -> Verdict {
        let now_s = self.sim.state.clock.now_s();
        let truth = self.truth();
        let by_id: HashMap<u64, &CallTruth> = truth.iter().map(|t| (t.id, t)).collect();
        // Every call eligible now; of those, the ones eligible when the last pass started must be
        // stored (a recording that appeared later may still be waiting for its re-check).
        let eligible_now: BTreeSet<u64> = eligible(&truth, now_s).iter().map(|t| t.id).collect();
        let required: BTreeSet<u64> = eligible(&truth, required_s).iter().map(|t| t.id).collect();

        let mut files: BTreeMap<u64, Vec<(String, PathBuf)>> = BTreeMap::new();
        for (id, ext, path) in stored_files(&self.storage_root) {
            files.entry(id).or_default().push((ext, path));
        }
        let mut verdict = Verdict {
            calls: truth.len(),
            eligible: eligible_now.len(),
            ..Verdict::default()
        };
        for (id, entries) in &files {
            let recordings: Vec<&PathBuf> = entries
                .iter()
                .filter(|(ext, _)| ext == "mp3")
                .map(|(_, p)| p)
                .collect();
            let documents: Vec<&PathBuf> = entries
                .iter()
                .filter(|(ext, _)| ext == "json")
                .map(|(_, p)| p)
                .collect();
            if recordings.len() > 1 || documents.len() > 1 {
                verdict.duplicated.insert(*id);
            }
            if !eligible_now.contains(id) {
                verdict.wrongly_imported.insert(*id);
                continue;
            }
            let expected_bytes = by_id[id].recording_bytes.unwrap_or(0);
            let expected = audio_sha256(*id, AudioKind::Recording, expected_bytes);
            let whole = recordings.len() == 1
                && documents.len() == 1
                && sha256_of(recordings[0]) == (expected_bytes, expected.clone())
                && serde_json::from_slice::<CallMetadata>(&std::fs::read(documents[0]).unwrap())
                    .is_ok_and(|m| {
                        m.recording.sha256 == expected && m.recording.size_bytes == expected_bytes
                    });
            if whole {
                verdict.imported += 1;
            } else {
                verdict.corrupt.insert(*id);
            }
        }
        verdict.missing = required
            .iter()
            .filter(|id| !files.contains_key(id))
            .copied()
            .collect();
        verdict.late_pending = eligible_now
            .iter()
            .filter(|id| !required.contains(id) && !files.contains_key(id))
            .count();

        let storage = Storage::from_settings(&StorageSettings {
            root: self.storage_root.clone(),
            ..StorageSettings::default()
        })
        .unwrap();
        verdict.partial = storage.partial_files().unwrap();

        // Announcements: nobody is bound to the events exchange, so every one of them is kept in
        // the unrouted queue. One import is one document: two documents for a call mean it was
        // imported twice.
        let mut documents: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
        for message in drain_queue(&self.names.unrouted).await {
            verdict.announcements += 1;
            let event: CallImported = serde_json::from_slice(&message).unwrap();
            documents
                .entry(event.metadata.call_id.0)
                .or_default()
                .insert(event.metadata.imported_at.clone());
        }
        for (id, imports) in &documents {
            if imports.len() > 1 {
                verdict.duplicated.insert(*id);
            }
        }
        // Two imports within one second write the same document; the workers' logs tell them
        // apart: one `call imported` line per import.
        for (id, imports) in self.imports_logged() {
            if imports > 1 {
                verdict.duplicated.insert(id);
            }
        }
        verdict.announced = documents.len();
        // From a call's end to its import, for the calls made during the traffic (the first
        // import's history ended days ago).
        let mut latencies: Vec<i64> = documents
            .iter()
            .filter_map(|(id, imports)| {
                let ended = by_id.get(id)?.ended_at?;
                let imported = time::OffsetDateTime::parse(
                    imports.first()?,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok()?;
                let ms = (imported.unix_timestamp_nanos() / 1_000_000) as i64 - ended * 1000;
                (ms < 3_600_000).then_some(ms)
            })
            .collect();
        latencies.sort_unstable();
        verdict.end_to_import_ms = [0.5, 0.9, 1.0]
            .map(|q| {
                latencies
                    .get(((latencies.len() as f64 * q) as usize).min(latencies.len().max(1) - 1))
                    .copied()
                    .unwrap_or(0)
            })
            .to_vec();
        verdict.unannounced = files
            .keys()
            .filter(|id| !documents.contains_key(id))
            .copied()
            .collect();
        verdict.announced_not_stored = documents
            .keys()
            .filter(|id| !files.contains_key(id))
            .copied()
            .collect();
        verdict.dead_letters = queue_depth(&self.names.dead).await;

        let webhooks = self.sim.state.webhooks(self.company.id).unwrap();
        verdict.webhooks_delivered = webhooks.iter().map(|w| w.delivered).sum();
        verdict.webhooks_dropped = webhooks.iter().map(|w| w.dropped).sum();
        verdict.webhook_failed_attempts = webhooks.iter().map(|w| w.failed_attempts).sum();
        let stats = self.sim.state.stats(self.company.id).unwrap();
        verdict.api_requests = stats.by_status.values().sum();
        verdict.api_5xx = stats
            .by_status
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum();
        verdict.api_429 = stats.by_status.get(&429).copied().unwrap_or(0);
        let endpoint = |name: &str| stats.by_endpoint.get(name).copied().unwrap_or(0);
        verdict.downloads = endpoint("download_recordings");
        verdict.downloads_cut_short = endpoint("download_recordings_cut_short");
        verdict
    }
}

/// Every message of `queue`, taken and acknowledged.
pub(super) async fn drain_queue(queue: &str) -> Vec<Vec<u8>> {
    let amqp = amqp().await;
    let mut bodies = Vec::new();
    while let Some(delivery) = amqp
        .channel
        .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
        .await
        .unwrap()
    {
        bodies.push(delivery.data.clone());
        delivery
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .unwrap();
    }
    amqp.close().await;
    bodies
}

/// The calls the import rules take, by the truth as of `at_s`: finished, started in the window,
/// by a paying agent, with a recording of at most 200 MB that had appeared by then.
pub(super) fn eligible(truth: &[CallTruth], at_s: i64) -> Vec<&CallTruth> {
    truth
        .iter()
        .filter(|t| {
            t.agent_paying
                && t.ended_at.is_some_and(|end| end <= at_s)
                && t.started_at >= at_s - WINDOW_S
                && t.recording_bytes.is_some_and(|b| b <= MAX_RECORDING_BYTES)
                && t.recording_ready_at.is_some_and(|ready| ready <= at_s)
        })
        .collect()
}

/// `(call id, extension, path)` of every final file under `root` (temporary ones excluded).
pub(super) fn stored_files(root: &Path) -> Vec<(u64, String, PathBuf)> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_none_or(|n| n != ".partial") {
                    dirs.push(path);
                }
                continue;
            }
            let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
                continue;
            };
            if let Ok(id) = stem.to_string_lossy().parse::<u64>() {
                found.push((id, ext.to_string_lossy().into_owned(), path));
            }
        }
    }
    found
}

pub(super) fn sha256_of(path: &Path) -> (u64, String) {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    let mut bytes = 0;
    loop {
        let n = file.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buffer[..n]);
    }
    (bytes, hex::encode(hasher.finalize()))
}

impl std::fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "| {:.0} s | {:?}: {} | {:.1} s | {} | {} | {} |",
            self.at.as_secs_f64(),
            self.fault,
            self.detail,
            self.outage.as_secs_f64(),
            seconds(self.ready),
            seconds(self.flowing),
            seconds(self.spool_drained),
        )
    }
}

pub(super) fn seconds(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

#[derive(Debug, Default)]
pub(super) struct Verdict {
    pub(super) calls: usize,
    pub(super) eligible: usize,
    pub(super) imported: usize,
    pub(super) missing: BTreeSet<u64>,
    pub(super) duplicated: BTreeSet<u64>,
    pub(super) corrupt: BTreeSet<u64>,
    pub(super) partial: Vec<String>,
    pub(super) wrongly_imported: BTreeSet<u64>,
    pub(super) unannounced: BTreeSet<u64>,
    pub(super) announced_not_stored: BTreeSet<u64>,
    pub(super) late_pending: usize,
    pub(super) announcements: usize,
    pub(super) announced: usize,
    pub(super) dead_letters: u32,
    pub(super) webhooks_delivered: u64,
    pub(super) webhooks_dropped: u64,
    pub(super) webhook_failed_attempts: u64,
    pub(super) api_requests: u64,
    api_5xx: u64,
    api_429: u64,
    pub(super) downloads: u64,
    pub(super) downloads_cut_short: u64,
    /// p50, p90 and max, in milliseconds.
    pub(super) end_to_import_ms: Vec<i64>,
    pub(super) made: usize,
    pub(super) settled: Duration,
    /// `name: exit status` of each process stopped at the end.
    pub(super) stopped: Vec<String>,
    /// Secrets found in the logs.
    pub(super) leaks: Vec<String>,
}

impl Verdict {
    /// Everything that breaks the promise: the run fails unless it is 0.
    pub(super) fn defects(&self) -> usize {
        self.missing.len()
            + self.duplicated.len()
            + self.corrupt.len()
            + self.partial.len()
            + self.wrongly_imported.len()
            + self.unannounced.len()
            + self.announced_not_stored.len()
            + self.leaks.len()
            + self.late_pending
            + self.dead_letters as usize
            + self.stopped.iter().filter(|s| !s.ends_with(": 0")).count()
    }
}

/// The printout of a run.
pub(super) struct Report<'a> {
    pub(super) plan: &'a Plan,
    pub(super) faults: &'a [FaultRecord],
    pub(super) verdict: &'a Verdict,
    pub(super) logs: PathBuf,
}

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (plan, v) = (self.plan, self.verdict);
        let ids = |set: &BTreeSet<u64>| {
            if set.is_empty() {
                "0".to_string()
            } else {
                format!("**{}** {set:?}", set.len())
            }
        };
        writeln!(
            out,
            "\n## Chaos run: {} s of traffic, {} calls a minute\n",
            plan.traffic.as_secs(),
            plan.calls_per_minute
        )?;
        writeln!(out, "| figure | value |\n|---|---|")?;
        let rows: Vec<(&str, String)> = vec![
            (
                "calls in the company (60 of history + the traffic)",
                format!("{} ({} made during the traffic)", v.calls, v.made),
            ),
            ("eligible by the simulator's truth", v.eligible.to_string()),
            (
                "imported whole (SHA-256 and size checked)",
                v.imported.to_string(),
            ),
            ("**missing**", ids(&v.missing)),
            ("**duplicated**", ids(&v.duplicated)),
            ("**corrupt**", ids(&v.corrupt)),
            (
                "**partial files left**",
                if v.partial.is_empty() {
                    "0".into()
                } else {
                    format!("**{}** {:?}", v.partial.len(), v.partial)
                },
            ),
            ("imported against the rules", ids(&v.wrongly_imported)),
            ("imported but never announced", ids(&v.unannounced)),
            ("announced but not stored", ids(&v.announced_not_stored)),
            (
                "**eligible, not stored, and ready only after the last pass started**",
                v.late_pending.to_string(),
            ),
            (
                "`call.imported` announcements (calls announced)",
                format!("{} ({})", v.announcements, v.announced),
            ),
            ("**dead letters**", v.dead_letters.to_string()),
            (
                "webhooks delivered / dropped by the simulator / failed attempts",
                format!(
                    "{} / {} / {}",
                    v.webhooks_delivered, v.webhooks_dropped, v.webhook_failed_attempts
                ),
            ),
            (
                "recording downloads (cut short by the simulator)",
                format!("{} ({})", v.downloads, v.downloads_cut_short),
            ),
            (
                "from a call's end to its import: p50 / p90 / max (webhook delay 2 s + up to 1.5 s)",
                format!(
                    "{:.1} s / {:.1} s / {:.1} s",
                    v.end_to_import_ms[0] as f64 / 1e3,
                    v.end_to_import_ms[1] as f64 / 1e3,
                    v.end_to_import_ms[2] as f64 / 1e3
                ),
            ),
            (
                "Aircall API requests (5xx injected, 429)",
                format!("{} ({}, {})", v.api_requests, v.api_5xx, v.api_429),
            ),
            (
                "settled after the traffic (quiet period, one pass, queues empty)",
                format!("{:.0} s", v.settled.as_secs_f64()),
            ),
            (
                "exit status of each process after SIGTERM at the end",
                v.stopped.join(", "),
            ),
            (
                "secrets in the logs of the 4 processes",
                if v.leaks.is_empty() {
                    "none".into()
                } else {
                    format!("**{:?}**", v.leaks)
                },
            ),
        ];
        for (name, value) in rows {
            writeln!(out, "| {name} | {value} |")?;
        }
        writeln!(
            out,
            "\nRecovery, timed from the part being back (RabbitMQ: `start_app` returned; a process: started again):\n\n| at | fault | outage | all processes ready again | a call that ended after it imported | spool drained |\n|---|---|---|---|---|---|"
        )?;
        for fault in self.faults {
            writeln!(out, "{fault}")?;
        }
        writeln!(out, "\nLogs: {}", self.logs.display())
    }
}
