//! The RabbitMQ connection of a process and confirmed publishing.
//!
//! lapin's automatic recovery rides out a broker restart or a network cut: it reconnects,
//! replays the topology, confirm mode and QoS, and resubscribes consumers. What it cannot do is
//! connect for the first time while the broker is down, or come back once it has given up; the
//! supervisor here ([`Broker::run`]) covers both, so a process may start before RabbitMQ and never
//! needs a restart because of it.
//!
//! Publishing never waits on a broken connection: when the link is down, [`Broker::publish`]
//! fails at once, so the webhook endpoint can spool the job and answer inside its deadline.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::message::Message;
use super::topology::{self, QueueNames};
use crate::config::{QueueSettings, SecretUrl};

/// Why a message was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ is not connected")]
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

impl Broker {
    /// A broker handle; nothing connects until [`Broker::connect`] or [`Broker::run`].
    pub fn new(url: &SecretUrl, settings: &QueueSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: url.clone(),
                names: QueueNames::new(settings),
                settings: settings.clone(),
                link: RwLock::new(None),
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

    /// Whether a publish may succeed right now.
    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|link| {
            link.connection.status().connected() && link.publisher.status().connected()
        })
    }

    /// Connects once, declares the topology and opens the publishing channel.
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
        let timeout = self.inner.settings.connect_timeout();
        let connection = tokio::time::timeout(
            timeout,
            Connection::connect(self.inner.url.expose().as_str(), properties),
        )
        .await
        .map_err(|_| {
            lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to RabbitMQ timed out",
            ))
        })??;
        let publisher = connection.create_channel().await?;
        topology::declare(&publisher, &self.inner.names, &self.inner.settings).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let link = Link {
            connection: Arc::new(connection),
            publisher,
        };
        *self
            .inner
            .link
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(link);
        Ok(())
    }

    /// A new channel on the current connection (for consumers), once connected.
    pub async fn channel(&self) -> Result<Channel, PublishError> {
        let link = self
            .current()
            .filter(Link::alive)
            .ok_or(PublishError::Unavailable)?;
        Ok(link.connection.create_channel().await?)
    }

    /// Messages waiting in `queue` (a passive declare: the queue is never created by this).
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
    /// broker is away), and connects again if lapin's recovery ever gives up. Closes the
    /// connection on the way out.
    pub async fn run(self, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let link = self.current().filter(Link::alive);
            let pause = if let Some(link) = link {
                failures = 0;
                // The connection lives but the broker closed the publishing channel (a
                // channel-level error): open a new one, or publishing would never resume.
                let channel = link.publisher.status();
                if !(channel.connected() || channel.reconnecting() || channel.initializing()) {
                    match self.reopen_publisher(&link).await {
                        Ok(()) => info!("reopened the RabbitMQ publishing channel"),
                        Err(e) => {
                            warn!(error = %e, "cannot reopen the RabbitMQ publishing channel")
                        }
                    }
                }
                Duration::from_secs(1)
            } else {
                match self.connect().await {
                    Ok(()) => {
                        info!(queue = %self.inner.names.import, "connected to RabbitMQ; topology declared");
                        failures = 0;
                        Duration::from_secs(1)
                    }
                    Err(e) => {
                        failures += 1;
                        warn!(error = %e, attempt = failures, "cannot connect to RabbitMQ; retrying");
                        Duration::from_millis(250u64.saturating_mul(1 << failures.min(5)))
                            .min(Duration::from_secs(5))
                    }
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => break,
            }
        }
        let link = self
            .inner
            .link
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(link) = link {
            let _ = link.connection.close(200, "shutting down".into()).await;
        }
    }

    async fn reopen_publisher(&self, link: &Link) -> Result<(), lapin::Error> {
        let publisher = link.connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let fresh = Link {
            connection: link.connection.clone(),
            publisher,
        };
        *self
            .inner
            .link
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh);
        Ok(())
    }

    /// Publishes `message` to the import queue and waits for RabbitMQ's confirm, at most
    /// `deadline`. `Ok` means the job is on disk on a majority of the queue's nodes.
    pub async fn publish(&self, message: &Message, deadline: Duration) -> Result<(), PublishError> {
        self.publish_bytes(message, &message.encode(), deadline)
            .await
    }

    /// As [`Broker::publish`], with the body already encoded (the spool keeps bodies).
    pub async fn publish_bytes(
        &self,
        message: &Message,
        body: &[u8],
        deadline: Duration,
    ) -> Result<(), PublishError> {
        let routing_key = self.inner.names.import.clone();
        self.publish_to("", &routing_key, message, body, deadline)
            .await
    }

    /// Publishes to any exchange and routing key with a confirm, `mandatory` so a message with
    /// nowhere to go comes back as an error instead of vanishing.
    pub async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
        body: &[u8],
        deadline: Duration,
    ) -> Result<(), PublishError> {
        let link = self.current().ok_or(PublishError::Unavailable)?;
        if !link.publisher.status().connected() {
            return Err(PublishError::Unavailable);
        }
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            // 2 = persistent: written to disk, survives a broker restart.
            .with_delivery_mode(2)
            .with_message_id(message.id().into())
            .with_type(message.kind().into())
            .with_app_id("aircall-ingest".into());
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
                Err(PublishError::Unroutable(routing_key.to_string()))
            }
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            // The channel is in confirm mode; a missing confirm would be a bug here.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Nacked),
        }
    }
}
