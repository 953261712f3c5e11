//! The dead-letter queue, for people: jobs that used up their attempts (or that RabbitMQ gave up
//! redelivering), listed with their errors, and replayed into the import queue once what broke
//! is fixed.
//!
//! RabbitMQ cannot show a message without delivering it, so both operations read the queue on a
//! channel of their own with `basic.get` and manual acks. Listing takes nothing: every message
//! read is given back (nacked with requeue) before the channel closes. Replaying publishes a
//! job to the import queue with a confirm **before** acking its dead letter, so a crash in
//! between leaves a duplicate (which the worker's idempotence absorbs), never a loss. What is
//! held unacked is bounded by `max_scan`; a closed channel gives everything back by itself.
//! A quorum queue takes given-back messages in through its log, a moment after the nack: a
//! reader answers once the queue's count has grown by what it gave back (5 s at most; a
//! message dead-lettered meanwhile can end the wait early), so whatever reads the queue next
//! (a listing, a replay, RabbitMQ's own count) sees all of it.
//!
//! RabbitMQ's count of a quorum queue is a lower bound, never the truth to stop at: it leaves
//! out messages on their way back, and it is 0 whenever the queue's leader does not answer
//! within 250 ms (a busy broker). So a reader reads until `basic.get` finds the queue empty (or
//! `max_scan`), and counts only to know when what it gave back is in again.
//!
//! One reader at a time, across every process (a lease in Redis): messages another reader
//! holds are invisible, so two readers would each see, or replay, only part of the queue.

use lapin::Channel;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde::Serialize;

use super::{Broker, JobFailure, Message, PublishError, Trigger};
use crate::aircall::CallId;
use crate::import::lease::{Lease, Leases};

/// How long a read waits for messages an earlier reader gave back to be in the queue again.
const RETURN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a reader, giving its messages back, waits for the queue to count them again.
const GIVE_BACK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a reader waits for another one to finish.
const READER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the dead letters could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Broker(#[from] PublishError),
    #[error("Redis failed")]
    Redis(#[from] redis::RedisError),
    #[error("another listing or replay is reading the dead-letter queue")]
    Busy,
}

impl From<lapin::Error> for DeadLetterError {
    fn from(e: lapin::Error) -> Self {
        Self::Broker(e.into())
    }
}

/// One message of the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The job id (the AMQP `message_id`); what a replay of one names.
    pub job_id: Option<String>,
    pub connection_id: Option<String>,
    pub call_id: Option<CallId>,
    pub trigger: Option<Trigger>,
    /// Failed attempts recorded in the job.
    pub attempts: u32,
    /// Why it is here: the job's last error, or what RabbitMQ recorded.
    pub failure: JobFailure,
    /// Whether the body is a job this service can replay.
    pub replayable: bool,
}

/// A page of dead letters.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    /// Messages in the dead-letter queue once the listing gave them back (RabbitMQ's count; at
    /// least the messages the listing read).
    pub total: u32,
    /// Messages read to fill the page (at most `max_scan`).
    pub scanned: u32,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The job with this id.
    One(String),
    /// Every replayable one, of one connection or of all, optionally only with this failure code.
    All {
        connection_id: Option<String>,
        failure_code: Option<String>,
    },
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Jobs published back to the import queue (and removed from the dead letters).
    pub replayed: u32,
    /// Selected messages left in place because no version of this service can read them.
    pub unreadable: u32,
    /// Messages in the dead-letter queue afterwards, counted once the replay gave back what it
    /// did not take (more than one call can scan, not selected, or dead-lettered meanwhile).
    pub remaining: u32,
}

/// The dead-letter queue of a broker.
#[derive(Clone)]
pub struct DeadLetters {
    broker: Broker,
    /// The one-reader lease.
    readers: Leases,
    reader_key: String,
    /// At most this many messages are held unacked by one call.
    max_scan: u32,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("queue", &self.broker.names().dead)
            .field("max_scan", &self.max_scan)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// `readers` leases the `{key_prefix}:dead-letters:reader` key.
    pub fn new(broker: Broker, readers: Leases, key_prefix: &str, max_scan: u32) -> Self {
        Self {
            broker,
            readers,
            reader_key: format!("{key_prefix}:dead-letters:reader"),
            max_scan: max_scan.max(1),
        }
    }

    /// Waits (a few seconds at most) to be the one reader.
    async fn reader_lease(&self) -> Result<Lease, DeadLetterError> {
        let deadline = tokio::time::Instant::now() + READER_WAIT;
        loop {
            if let Some(lease) = self.readers.acquire_key(self.reader_key.clone()).await? {
                return Ok(lease);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DeadLetterError::Busy);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Runs `work` as the one reader, in a task of its own, and lets go of the lease when it
    /// ends, failed or not: should the caller's future be dropped (a server stopping past its
    /// shutdown deadline), the work still gives back what it holds and releases the lease,
    /// instead of leaving other readers refused (409) until the lease expires.
    async fn as_reader<T, Fut>(&self, work: impl FnOnce(Self) -> Fut) -> Result<T, DeadLetterError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, DeadLetterError>> + Send + 'static,
    {
        let lease = self.reader_lease().await?;
        let work = work(self.clone());
        let task = tokio::spawn(async move {
            let result = work.await;
            lease.release().await;
            result
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(_) => Err(PublishError::Unavailable.into()),
        }
    }

    /// Up to `limit` dead letters, oldest first, of `connection_id` when given.
    pub async fn list(
        &self,
        connection_id: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, DeadLetterError> {
        let connection_id = connection_id.map(str::to_owned);
        self.as_reader(
            |this| async move { this.list_as_reader(connection_id.as_deref(), limit).await },
        )
        .await
    }

    async fn list_as_reader(
        &self,
        connection_id: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, DeadLetterError> {
        let mut reader = Reader::open(&self.broker).await?;
        let mut items = Vec::new();
        let mut scanned = 0;
        let read = async {
            while items.len() < limit && scanned < self.max_scan {
                let Some(message) = reader.next().await? else {
                    break;
                };
                scanned += 1;
                let letter = describe(&message);
                reader.hold(message);
                if connection_id.is_none_or(|c| letter.connection_id.as_deref() == Some(c)) {
                    items.push(letter);
                }
            }
            Ok::<_, PublishError>(())
        }
        .await;
        let total = reader.give_back().await;
        read?;
        Ok(DeadLetterPage {
            items,
            total,
            scanned,
        })
    }

    /// Publishes the selected jobs back to the import queue, each as a fresh job (no attempts,
    /// no failure), then removes them from the dead letters. `Ok` with `replayed: 0` for
    /// [`Selection::One`] means no such job was found. A job is replayed once per call: one
    /// that fails again at once (its connection still refused, say) is back in the dead letters
    /// while the scan goes on, and is left there.
    pub async fn replay(
        &self,
        selection: &Selection,
        deadline: std::time::Duration,
    ) -> Result<Replayed, DeadLetterError> {
        let selection = selection.clone();
        self.as_reader(|this| async move { this.replay_as_reader(&selection, deadline).await })
            .await
    }

    async fn replay_as_reader(
        &self,
        selection: &Selection,
        deadline: std::time::Duration,
    ) -> Result<Replayed, DeadLetterError> {
        let mut reader = Reader::open(&self.broker).await?;
        let mut done = Replayed::default();
        let mut scanned = 0;
        let mut replayed_ids = std::collections::HashSet::new();
        let result = async {
            while scanned < self.max_scan {
                let Some(message) = reader.next().await? else {
                    break;
                };
                scanned += 1;
                let letter = describe(&message);
                let selected = match selection {
                    Selection::One(id) => letter.job_id.as_deref() == Some(id.as_str()),
                    Selection::All {
                        connection_id,
                        failure_code,
                    } => {
                        connection_id
                            .as_deref()
                            .is_none_or(|c| letter.connection_id.as_deref() == Some(c))
                            && failure_code
                                .as_deref()
                                .is_none_or(|code| letter.failure.code == code)
                    }
                };
                let job = match Message::decode(&message.delivery.data) {
                    Ok(Message::ImportCall(job))
                        if selected && !replayed_ids.contains(&job.job_id) =>
                    {
                        job
                    }
                    decoded => {
                        if selected && decoded.is_err() {
                            done.unreadable += 1;
                        }
                        reader.hold(message);
                        continue;
                    }
                };
                let mut job = job;
                job.attempt = 0;
                job.failure = None;
                let job_id = job.job_id.clone();
                let published = self
                    .broker
                    .publish(&Message::ImportCall(job), deadline)
                    .await;
                if let Err(e) = published {
                    reader.hold(message);
                    return Err(e);
                }
                reader.ack(message).await?;
                replayed_ids.insert(job_id);
                done.replayed += 1;
                if matches!(selection, Selection::One(_)) {
                    break;
                }
            }
            Ok::<_, PublishError>(())
        }
        .await;
        done.remaining = reader.give_back().await;
        result.map(|()| done).map_err(DeadLetterError::from)
    }
}

/// A channel reading the dead-letter queue. What it reads and does not ack is held until
/// [`Reader::give_back`].
struct Reader {
    channel: Channel,
    queue: String,
    /// RabbitMQ's count when the reader opened (a lower bound).
    total: u32,
    /// Messages read so far.
    read: u32,
    /// Messages read and acked (gone from the queue).
    acked: u32,
    /// The latest message held (delivery tags grow, so nacking it with `multiple` gives back
    /// every message held).
    last_held: Option<BasicGetMessage>,
}

impl Reader {
    async fn open(broker: &Broker) -> Result<Self, PublishError> {
        let channel = broker.channel().await?;
        let queue = broker.names().dead.clone();
        let total = match ready_count(&channel, &queue).await {
            Ok(total) => total,
            Err(e) => {
                let _ = channel.close(200, "done".into()).await;
                return Err(e.into());
            }
        };
        Ok(Self {
            channel,
            queue,
            total,
            read: 0,
            acked: 0,
            last_held: None,
        })
    }

    /// The next message, unacked: the caller acks it or [`Reader::hold`]s it. Messages the
    /// previous reader gave back reach the queue again a moment after its nack (quorum queues
    /// apply it through their log): an empty answer is retried briefly while the queue's count
    /// says there is more, so a listing right after another does not come out short.
    async fn next(&mut self) -> Result<Option<BasicGetMessage>, PublishError> {
        let deadline = tokio::time::Instant::now() + RETURN_WAIT;
        loop {
            let got = self
                .channel
                .basic_get(
                    self.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?;
            if got.is_some() || self.read >= self.total || tokio::time::Instant::now() >= deadline {
                self.read += u32::from(got.is_some());
                return Ok(got);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Keeps `message` in the queue (given back at the end).
    fn hold(&mut self, message: BasicGetMessage) {
        self.last_held = Some(message);
    }

    /// Removes `message` from the queue.
    async fn ack(&mut self, message: BasicGetMessage) -> Result<(), lapin::Error> {
        message.delivery.ack(BasicAckOptions::default()).await?;
        self.acked += 1;
        Ok(())
    }

    /// Gives every message still held back to the queue and waits (up to [`GIVE_BACK_WAIT`])
    /// until the queue counts them again, then closes the channel (which would give them back
    /// too, should the nack have failed). Returns the messages in the queue by then: RabbitMQ's
    /// count once it includes them, else the least the reader knows is there.
    async fn give_back(self) -> u32 {
        let held = self.read - self.acked;
        // Nobody else takes from the queue while the reader lease is held, so besides what the
        // reader holds it keeps what it counts now (the messages not read, and any added since
        // the open), and at least what was there at the open and not read.
        let unread = ready_count(&self.channel, &self.queue)
            .await
            .unwrap_or(0)
            .max(self.total.saturating_sub(self.read));
        let expected = unread + held;
        let mut in_queue = expected;
        if let Some(last) = &self.last_held {
            let nacked = last
                .delivery
                .nack(BasicNackOptions {
                    multiple: true,
                    requeue: true,
                })
                .await;
            // Usually in within milliseconds; a busy broker (whose count may read 0) is asked
            // less and less often.
            let deadline = tokio::time::Instant::now() + GIVE_BACK_WAIT;
            let mut pause = std::time::Duration::from_millis(10);
            while nacked.is_ok() && tokio::time::Instant::now() < deadline {
                match ready_count(&self.channel, &self.queue).await {
                    Ok(count) if count >= expected => {
                        in_queue = count;
                        break;
                    }
                    Ok(_) => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(std::time::Duration::from_millis(250));
                    }
                    Err(_) => break,
                }
            }
        }
        let _ = self.channel.close(200, "done".into()).await;
        in_queue
    }
}

/// The messages ready in `queue` by RabbitMQ's count: neither those a reader holds nor, for a
/// moment after their nack, those it gave back; 0 when the queue's leader does not answer in
/// 250 ms (`rabbit_quorum_queue:stat/2`).
async fn ready_count(channel: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count())
}

/// What a person needs to know about a dead letter, from its body and its headers.
fn describe(message: &BasicGetMessage) -> DeadLetter {
    let delivery = &message.delivery;
    let headers = delivery.properties.headers().as_ref();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_string());
    match Message::decode(&delivery.data) {
        Ok(Message::ImportCall(job)) => {
            let failure = job
                .failure
                .clone()
                .unwrap_or_else(|| broker_failure(headers));
            DeadLetter {
                job_id: Some(job.job_id),
                connection_id: Some(job.connection_id),
                call_id: Some(job.call_id),
                trigger: Some(job.trigger),
                attempts: job.attempt,
                failure,
                replayable: true,
            }
        }
        Err(e) => DeadLetter {
            job_id: message_id,
            connection_id: None,
            call_id: None,
            trigger: None,
            attempts: 0,
            failure: JobFailure {
                code: "unreadable".into(),
                message: format!("the message is not a job this version can read: {e}"),
                at_ms: death_time_ms(headers).unwrap_or(0),
            },
            replayable: false,
        },
    }
}

/// The failure of a job RabbitMQ dead-lettered by itself (it carries no error of ours): the
/// import queue's delivery limit, hit by a job whose worker died or gave it back every time.
fn broker_failure(headers: Option<&FieldTable>) -> JobFailure {
    let reason = header_text(headers, "x-first-death-reason");
    let (code, message) = match reason.as_deref() {
        Some("delivery_limit") => (
            "delivery_limit",
            "RabbitMQ delivered the job the maximum number of times without any worker settling it (each worker stopped or crashed during it)".to_string(),
        ),
        Some(other) => (
            "dead_lettered",
            format!("RabbitMQ dead-lettered the job ({other})"),
        ),
        None => (
            "dead_lettered",
            "dead-lettered without a recorded reason".to_string(),
        ),
    };
    JobFailure {
        code: code.into(),
        message,
        at_ms: death_time_ms(headers).unwrap_or(0),
    }
}

fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_string()),
        _ => None,
    }
}

/// When RabbitMQ first dead-lettered the message (`x-death[0].time`, Unix seconds).
fn death_time_ms(headers: Option<&FieldTable>) -> Option<i64> {
    let deaths = headers?.inner().get("x-death")?.as_array()?;
    let first = deaths.as_slice().first()?.as_field_table()?;
    let time = first.inner().get("time")?.as_timestamp()?;
    i64::try_from(time).ok().map(|s| s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    fn headers(reason: &str, time: u64) -> FieldTable {
        let mut death = FieldTable::default();
        death.insert(
            ShortString::from("reason"),
            AMQPValue::LongString(LongString::from(reason)),
        );
        death.insert(ShortString::from("time"), AMQPValue::Timestamp(time));
        let mut table = FieldTable::default();
        table.insert(
            ShortString::from("x-first-death-reason"),
            AMQPValue::LongString(LongString::from(reason)),
        );
        table.insert(
            ShortString::from("x-death"),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        table
    }

    #[test]
    fn a_job_rabbitmq_gave_up_on_says_why() {
        let failure = broker_failure(Some(&headers("delivery_limit", 1_700_000_000)));
        assert_eq!(failure.code, "delivery_limit");
        assert_eq!(failure.at_ms, 1_700_000_000_000);
        assert!(failure.message.contains("maximum number of times"));
        assert_eq!(broker_failure(None).code, "dead_lettered");
    }
}
