//! The S3 backend of storage against a real S3 server: moto, started by each test on a port of
//! its own (installed by `deploy/local/test.sh` when missing).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aircall_ingest::config::{StorageBackend, StorageSettings};
use aircall_ingest::import::storage::Storage;
use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, ObjectStoreExt as _};
use secrecy::SecretString;

/// A `moto_server` on a free local port, killed when dropped.
pub struct MotoServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl MotoServer {
    const READY_WITHIN: Duration = Duration::from_secs(30);

    /// Starts a server on a port the system picks (no race with other tests for a free port)
    /// and waits until it answers.
    pub async fn start() -> Self {
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server must be on PATH (deploy/local/test.sh installs it)");
        // The server names its port on stderr (" * Running on http://127.0.0.1:PORT"), then logs
        // every request there: a thread reads it to the end so that the pipe never fills.
        let stderr = child.stderr.take().unwrap();
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line);
                let port = line
                    .split_once("Running on http://127.0.0.1:")
                    .and_then(|(_, port)| port.trim().parse::<u16>().ok());
                if let Some(port) = port
                    && let Some(tx) = port_tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let mut server = Self {
            child,
            endpoint: String::new(),
        };
        let port = match tokio::time::timeout(Self::READY_WITHIN, port_rx).await {
            Ok(Ok(port)) => port,
            Ok(Err(_)) => panic!(
                "moto_server exited before naming its port: {:?}",
                server.child.try_wait()
            ),
            Err(_) => panic!("moto_server named no port within {:?}", Self::READY_WITHIN),
        };
        server.endpoint = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Self::READY_WITHIN;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto_server did not answer on port {port} within {:?}",
                Self::READY_WITHIN
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Creates `bucket` with a plain unsigned request (moto accepts it; object_store cannot
    /// create buckets).
    pub async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    /// Storage settings for `bucket` on this server, under `prefix`.
    pub fn settings(&self, bucket: &str, prefix: &str) -> StorageSettings {
        StorageSettings {
            backend: StorageBackend::S3,
            s3_bucket: bucket.into(),
            s3_prefix: prefix.into(),
            s3_region: "us-east-1".into(),
            s3_endpoint: self.endpoint.clone(),
            s3_access_key_id: "test".into(),
            s3_secret_access_key: Some(SecretString::from("test")),
            s3_allow_http: true,
            ..StorageSettings::default()
        }
    }

    /// A fresh bucket and the storage on it.
    pub async fn storage(&self, bucket: &str) -> Storage {
        self.create_bucket(bucket).await;
        Storage::from_settings(&self.settings(bucket, "recordings")).unwrap()
    }

    /// The content type `key` of `bucket` was stored with (read with a signed request: moto
    /// refuses anonymous reads of objects).
    pub async fn content_type(&self, bucket: &str, key: &str) -> String {
        let settings = self.settings(bucket, "");
        let store = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(settings.s3_region)
            .with_endpoint(settings.s3_endpoint)
            .with_access_key_id(settings.s3_access_key_id)
            .with_secret_access_key("test")
            .with_allow_http(true)
            .build()
            .unwrap();
        let result = store.get(&ObjectPath::from(key)).await.unwrap();
        let content_type = result.attributes.get(&Attribute::ContentType).unwrap();
        content_type.to_string()
    }

    /// The multipart uploads of `bucket` not yet completed nor aborted.
    pub async fn open_multipart_uploads(&self, bucket: &str) -> usize {
        let listing = reqwest::get(format!("{}/{bucket}?uploads", self.endpoint))
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        listing.matches("<UploadId>").count()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY: &str = "acme/2026/11/29/5000000123.mp3";

fn recording(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

#[tokio::test]
async fn a_recording_streamed_in_many_parts_arrives_whole() {
    let moto = MotoServer::start().await;
    let storage = moto.storage("streamed").await;
    let expected = recording(12 * 1024 * 1024);

    let mut upload = storage.begin(KEY, "audio/mpeg").await.unwrap();
    for chunk in expected.chunks(64 * 1024) {
        upload.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(
        storage.size(KEY).await.unwrap(),
        None,
        "visible before finish"
    );
    let stored = upload.finish().await.unwrap();

    assert_eq!(stored.bytes, expected.len() as u64);
    assert_eq!(stored.location, format!("s3://streamed/recordings/{KEY}"));
    assert_eq!(stored.location, storage.location(KEY));
    assert_eq!(
        storage.size(KEY).await.unwrap(),
        Some(expected.len() as u64)
    );
    assert!(storage.get(KEY).await.unwrap().unwrap() == expected);
    assert_eq!(moto.open_multipart_uploads("streamed").await, 0);
    let key = format!("recordings/{KEY}");
    assert_eq!(moto.content_type("streamed", &key).await, "audio/mpeg");
}

#[tokio::test]
async fn an_aborted_upload_leaves_no_object_and_no_open_upload() {
    let moto = MotoServer::start().await;
    let storage = moto.storage("aborted").await;

    let mut upload = storage.begin(KEY, "audio/mpeg").await.unwrap();
    for chunk in recording(7 * 1024 * 1024).chunks(64 * 1024) {
        upload.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(moto.open_multipart_uploads("aborted").await, 1);
    upload.abort().await;

    assert_eq!(storage.size(KEY).await.unwrap(), None);
    assert_eq!(storage.get(KEY).await.unwrap(), None);
    assert_eq!(moto.open_multipart_uploads("aborted").await, 0);
}

#[tokio::test]
async fn a_dropped_upload_is_aborted_in_the_background() {
    let moto = MotoServer::start().await;
    let storage = moto.storage("dropped").await;

    let mut upload = storage.begin(KEY, "audio/mpeg").await.unwrap();
    upload
        .write(Bytes::from(recording(6 * 1024 * 1024)))
        .await
        .unwrap();
    drop(upload);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while moto.open_multipart_uploads("dropped").await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "upload still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(storage.size(KEY).await.unwrap(), None);
}

#[tokio::test]
async fn small_objects_round_trip_and_missing_ones_are_none() {
    let moto = MotoServer::start().await;
    let storage = moto.storage("small").await;
    let key = "acme/2026/11/29/5000000123.json";
    let json = Bytes::from_static(br#"{"id":5000000123}"#);

    let stored = storage
        .put(key, json.clone(), "application/json")
        .await
        .unwrap();
    let mut upload = storage.begin("acme/tiny.mp3", "audio/mpeg").await.unwrap();
    upload.write(Bytes::from_static(b"tiny")).await.unwrap();
    let tiny = upload.finish().await.unwrap();

    assert_eq!(stored.bytes, json.len() as u64);
    assert_eq!(stored.location, format!("s3://small/recordings/{key}"));
    assert_eq!(storage.get(key).await.unwrap(), Some(json));
    assert_eq!(tiny.bytes, 4);
    let json_key = format!("recordings/{key}");
    assert_eq!(
        moto.content_type("small", &json_key).await,
        "application/json"
    );
    assert_eq!(
        moto.content_type("small", "recordings/acme/tiny.mp3").await,
        "audio/mpeg"
    );
    assert_eq!(storage.get("acme/tiny.mp3").await.unwrap().unwrap(), "tiny");
    assert_eq!(storage.get("acme/missing.json").await.unwrap(), None);
    assert_eq!(storage.size("acme/missing.json").await.unwrap(), None);
    assert!(storage.partial_files().unwrap().is_empty());
    storage.clean_partials(KEY).await.unwrap();
}
