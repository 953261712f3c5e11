//! The RabbitMQ connection of a process and confirmed publishing.
//!
//! lapin's automatic recovery rides out a broker restart or a network cut: it reconnects,
//! replays the topology, confirm mode and QoS, and resubscribes consumers. What it cannot do is
//! connect for the first time while the broker is down, come back once it has given up or when
//! one of its attempts stalls, reopen a channel the broker closed (a channel-level error leaves the connection up), or recreate a
//! queue someone deleted. The supervisor here ([`Broker::run`]) covers those, so a process may
//! start before RabbitMQ and never needs a restart because of it.
//!
//! Publishing never waits on a link known to be down or blocked by a broker alarm: then
//! [`Broker::publish`] fails at once, so the webhook endpoint can spool the job and answer
//! inside its deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::message::Message;
use super::topology::{self, QueueNames};
use crate::config::{QueueSettings, SecretUrl};

/// Why a message was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ is not connected, or refuses publishers (resource alarm)")]
    Unavailable,
    #[error("RabbitMQ did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ could not route the message to {0} (queue missing?)")]
    Unroutable(String),
    #[error("RabbitMQ error")]
    Amqp(#[from] lapin::Error),
}

/// The AMQP properties of a message: its id and type, with the body already encoded.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// AMQP `message_id` (the job id).
    pub id: Option<&'a str>,
    /// AMQP `type` (the message type tag).
    pub kind: Option<&'a str>,
}

impl<'a> From<&'a Message> for Envelope<'a> {
    fn from(message: &'a Message) -> Self {
        Envelope {
            id: Some(message.id()),
            kind: Some(message.kind()),
        }
    }
}

/// One live connection and the channel publishers share (in confirm mode).
#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Channel,
}

impl Link {
    /// Still usable, or being recovered by lapin.
    fn alive(&self) -> bool {
        let status = self.connection.status();
        status.connected() || status.connecting() || status.reconnecting()
    }

    fn publisher_gone(&self) -> bool {
        let channel = self.publisher.status();
        !(channel.connected() || channel.reconnecting() || channel.initializing())
    }
}

/// The process's handle on RabbitMQ. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    url: SecretUrl,
    names: QueueNames,
    settings: QueueSettings,
    link: RwLock<Option<Link>>,
    /// Set when a publish found no queue: the supervisor declares the topology again.
    redeclare: AtomicBool,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.inner.url)
            .field("names", &self.inner.names)
            .field("connected", &self.is_connected())
            .finish()
    }
}

fn timed_out(what: &str) -> lapin::Error {
    lapin::Error::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    ))
}

impl Broker {
    /// A broker handle; nothing connects until [`Broker::connect`] or [`Broker::run`].
    pub fn new(url: &SecretUrl, settings: &QueueSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: url.clone(),
                names: QueueNames::new(settings),
                settings: settings.clone(),
                link: RwLock::new(None),
                redeclare: AtomicBool::new(false),
            }),
        }
    }

    pub fn names(&self) -> &QueueNames {
        &self.inner.names
    }

    fn current(&self) -> Option<Link> {
        self.inner
            .link
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, link: Option<Link>) -> Option<Link> {
        std::mem::replace(
            &mut *self
                .inner
                .link
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            link,
        )
    }

    /// Whether a publish may succeed right now: connected, publishing channel open, and no
    /// resource alarm blocking publishers.
    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|link| {
            let status = link.connection.status();
            status.connected() && !status.blocked() && link.publisher.status().connected()
        })
    }

    /// Connects once, declares the topology and opens the publishing channel, all within
    /// `queue.connect_timeout_ms`.
    pub async fn connect(&self) -> Result<(), lapin::Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(concat!("aircall-ingest/", env!("CARGO_PKG_VERSION")).into())
            .enable_auto_recover()
            // Keep trying for as long as the broker is away: 250 ms, doubling, at most 5 s apart.
            .configure_backoff(|backoff| {
                backoff
                    .with_min_delay(Duration::from_millis(250))
                    .with_max_delay(Duration::from_secs(5))
                    .without_max_times()
            });
        let setup = async {
            let connection =
                Connection::connect(self.inner.url.expose().as_str(), properties).await?;
            let publisher = self.open_publisher(&connection).await?;
            Ok::<_, lapin::Error>(Link {
                connection: Arc::new(connection),
                publisher,
            })
        };
        let link = tokio::time::timeout(self.inner.settings.connect_timeout(), setup)
            .await
            .map_err(|_| timed_out("connecting to RabbitMQ"))??;
        if let Some(old) = self.replace(Some(link)) {
            let _ = old.connection.close(200, "replaced".into()).await;
        }
        Ok(())
    }

    /// A confirm-mode channel on which the topology was declared (lapin replays, on recovery,
    /// what was declared on each channel).
    async fn open_publisher(&self, connection: &Connection) -> Result<Channel, lapin::Error> {
        let publisher = connection.create_channel().await?;
        topology::declare(&publisher, &self.inner.names, &self.inner.settings).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(publisher)
    }

    /// A new channel on the current connection (for consumers), once connected.
    pub async fn channel(&self) -> Result<Channel, PublishError> {
        let link = self
            .current()
            .filter(Link::alive)
            .ok_or(PublishError::Unavailable)?;
        Ok(link.connection.create_channel().await?)
    }

    /// Declares the topology on `channel` (idempotent): a consumer does it before subscribing,
    /// so a queue someone deleted is back before it consumes again.
    pub async fn declare_topology(&self, channel: &Channel) -> Result<(), lapin::Error> {
        topology::declare(channel, &self.inner.names, &self.inner.settings).await
    }

    /// Messages waiting in `queue` (a passive declare: the queue is never created by this).
    /// RabbitMQ's count of a quorum queue: ready messages only, and 0 when the queue's leader
    /// does not answer within 250 ms, so a gauge of it may dip to 0 on a busy broker.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, PublishError> {
        let channel = self.channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await;
        let _ = channel.close(200, "done".into()).await;
        Ok(declared?.message_count())
    }

    /// Keeps a connection up until `cancel` fires: connects (retrying with backoff while the
    /// broker is away), connects again if lapin's recovery ever gives up, reopens a publishing
    /// channel the broker closed, declares the topology again when a queue went missing.
    /// Closes the connection on the way out.
    pub async fn run(self, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        let mut down_since: Option<Instant> = None;
        loop {
            let link = self.current();
            let recovering = link.as_ref().is_some_and(Link::alive);
            let pause = match link.filter(|link| link.connection.status().connected()) {
                Some(link) => {
                    failures = 0;
                    down_since = None;
                    self.mend(&link).await;
                    Duration::from_secs(1)
                }
                None => {
                    // lapin's recovery gets `connect_timeout` to bring the link back; an attempt
                    // of its own can stall longer than that (seen: 10 s), so past it the
                    // supervisor connects afresh, and keeps lapin's link until one succeeds.
                    let since = *down_since.get_or_insert_with(Instant::now);
                    if recovering && since.elapsed() < self.inner.settings.connect_timeout() {
                        Duration::from_millis(250)
                    } else {
                        match self.connect().await {
                            Ok(()) => {
                                info!(queue = %self.inner.names.import, "connected to RabbitMQ; topology declared");
                                failures = 0;
                                down_since = None;
                                Duration::from_secs(1)
                            }
                            Err(e) => {
                                failures += 1;
                                self.report_connect_failure(&e, failures);
                                Duration::from_millis(250u64.saturating_mul(1 << failures.min(5)))
                                    .min(Duration::from_secs(5))
                            }
                        }
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => break,
            }
        }
        if let Some(link) = self.replace(None) {
            let _ = link.connection.close(200, "shutting down".into()).await;
        }
    }

    /// Repairs what lapin's recovery does not: a closed publishing channel, a missing queue.
    async fn mend(&self, link: &Link) {
        let timeout = self.inner.settings.connect_timeout();
        if link.publisher_gone() {
            match tokio::time::timeout(timeout, self.open_publisher(&link.connection)).await {
                Ok(Ok(publisher)) => {
                    self.replace(Some(Link {
                        connection: link.connection.clone(),
                        publisher,
                    }));
                    info!("reopened the RabbitMQ publishing channel");
                }
                Ok(Err(e)) => warn!(error = %e, "cannot reopen the RabbitMQ publishing channel"),
                Err(_) => warn!("reopening the RabbitMQ publishing channel timed out"),
            }
        } else if self.inner.redeclare.swap(false, Ordering::Relaxed) {
            let declared = tokio::time::timeout(
                timeout,
                topology::declare(&link.publisher, &self.inner.names, &self.inner.settings),
            )
            .await;
            match declared {
                Ok(Ok(())) => {
                    warn!(queue = %self.inner.names.import, "a queue was missing; topology declared again")
                }
                _ => {
                    self.inner.redeclare.store(true, Ordering::Relaxed);
                    warn!("cannot declare the RabbitMQ topology again");
                }
            }
        }
    }

    fn report_connect_failure(&self, e: &lapin::Error, attempt: u32) {
        if e.to_string().contains("PRECONDITION_FAILED") {
            // Retrying cannot help: a queue exists with other arguments than the settings ask.
            error!(
                error = %e,
                attempt,
                "a RabbitMQ queue exists with different arguments: queue.delivery_limit changed, or \
                 another deployment uses queue.prefix; delete the queue or restore the setting"
            );
        } else {
            warn!(error = %e, attempt, "cannot connect to RabbitMQ; retrying");
        }
    }

    /// Publishes `message` to the import queue and waits for RabbitMQ's confirm, at most
    /// `deadline`. `Ok` means the job is on disk on a majority of the queue's nodes.
    pub async fn publish(&self, message: &Message, deadline: Duration) -> Result<(), PublishError> {
        self.publish_bytes(message.into(), &message.encode(), deadline)
            .await
    }

    /// As [`Broker::publish`], with the body already encoded (the spool keeps bodies).
    pub async fn publish_bytes(
        &self,
        envelope: Envelope<'_>,
        body: &[u8],
        deadline: Duration,
    ) -> Result<(), PublishError> {
        let routing_key = self.inner.names.import.clone();
        self.publish_to("", &routing_key, envelope, body, deadline)
            .await
    }

    /// Publishes to any exchange and routing key with a confirm, `mandatory` so a message with
    /// nowhere to go comes back as an error instead of vanishing.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: Envelope<'_>,
        body: &[u8],
        deadline: Duration,
    ) -> Result<(), PublishError> {
        if !self.is_connected() {
            return Err(PublishError::Unavailable);
        }
        let link = self.current().ok_or(PublishError::Unavailable)?;
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            // 2 = persistent: written to disk, survives a broker restart.
            .with_delivery_mode(2)
            .with_app_id("aircall-ingest".into());
        if let Some(id) = envelope.id {
            properties = properties.with_message_id(id.into());
        }
        if let Some(kind) = envelope.kind {
            properties = properties.with_type(kind.into());
        }
        let confirmed = async {
            let confirm = link
                .publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?;
            confirm.await
        };
        match tokio::time::timeout(deadline, confirmed).await {
            Err(_) => Err(PublishError::Timeout(deadline)),
            Ok(Err(e)) => Err(PublishError::Amqp(e)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                if exchange.is_empty() {
                    self.inner.redeclare.store(true, Ordering::Relaxed);
                }
                Err(PublishError::Unroutable(routing_key.to_string()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            // The channel is in confirm mode; a missing confirm would be a bug here.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        }
    }
}
