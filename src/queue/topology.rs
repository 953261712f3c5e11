//! The RabbitMQ topology every role relies on, declared idempotently by whichever role connects
//! first. A declaration with the same arguments is a no-op; different arguments are refused by
//! RabbitMQ with PRECONDITION_FAILED, which the broker supervisor logs as an error naming the
//! setting to check. Settings that are queue arguments are kept out of that trap where possible:
//! retry queues are named by their delay, so changing `queue.retry_delays_ms` makes new queues
//! (old ones empty themselves into the import queue as their messages expire).
//!
//! ```text
//!  publish (default exchange) ──▶ {p}.import ──▶ workers
//!                                    ▲   │ attempt failed: published to the next retry queue
//!          TTL expires, dead-lettered │   ▼
//!                       {p}.import.retry.{delay}ms  (one per delay)
//!  attempts used up, or delivery limit hit ──▶ {p}.import.dead  (inspect, replay)
//!  call stored ──▶ {p}.events (topic exchange) ──▶ downstream consumers' queues
//!                      └─ nobody bound for it ──▶ {p}.events.unrouted (alternate exchange
//!                                                 and queue: kept until someone replays them)
//! ```

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::QueueSettings;

/// Routing key of `call.imported` events on the events exchange.
pub const CALL_IMPORTED: &str = "call.imported";

/// Names of the exchanges and queues, derived from `queue.prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    /// Import jobs, consumed by workers.
    pub import: String,
    /// One delay queue per retry, in order, named by its delay.
    pub retries: Vec<String>,
    /// Jobs that used up their attempts.
    pub dead: String,
    /// Topic exchange of `call.imported` events.
    pub events: String,
    /// Alternate exchange of `events`, and the queue keeping what no consumer was bound for.
    pub unrouted: String,
}

impl QueueNames {
    pub fn new(settings: &QueueSettings) -> Self {
        let p = &settings.prefix;
        Self {
            import: format!("{p}.import"),
            retries: settings
                .retry_delays_ms
                .iter()
                .map(|delay| format!("{p}.import.retry.{delay}ms"))
                .collect(),
            dead: format!("{p}.import.dead"),
            events: format!("{p}.events"),
            unrouted: format!("{p}.events.unrouted"),
        }
    }
}

impl QueueNames {
    /// Every queue of the topology: the import queue, its retry queues, the dead-letter queue
    /// and the queue of unrouted events.
    pub fn all_queues(&self) -> Vec<&str> {
        let mut queues = vec![self.import.as_str()];
        queues.extend(self.retries.iter().map(String::as_str));
        queues.push(&self.dead);
        queues.push(&self.unrouted);
        queues
    }

    /// Every exchange of the topology.
    pub fn exchanges(&self) -> [&str; 2] {
        [&self.events, &self.unrouted]
    }
}

/// Deletes every queue and exchange of `names`, messages included (tests and benchmarks
/// clean up with it); what is already gone is fine.
pub async fn delete(channel: &Channel, names: &QueueNames) {
    for queue in names.all_queues() {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in names.exchanges() {
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

fn arguments(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(ShortString::from(key), value);
    }
    table
}

/// Deliveries a dead letter may have before RabbitMQ drops it: never reached in practice.
pub const DEAD_LETTER_DELIVERY_LIMIT: u32 = 1_000_000_000;

/// Every queue of the topology with its arguments, in declaration order (the dead-letter queue
/// before the queues that dead-letter into it).
pub fn queues(names: &QueueNames, settings: &QueueSettings) -> Vec<(String, FieldTable)> {
    let mut queues = Vec::new();
    // The dead-letter queue: a quorum queue, so dead letters are replicated like everything else.
    // Reading it (the admin API's listing) gives messages back with a requeue, which counts as a
    // delivery; RabbitMQ 4 gives quorum queues a default delivery limit of 20 and would then
    // drop a dead letter (it has nowhere to go from here): the limit is set out of reach.
    queues.push((
        names.dead.clone(),
        arguments(vec![
            ("x-queue-type", text("quorum")),
            (
                "x-delivery-limit",
                AMQPValue::LongUInt(DEAD_LETTER_DELIVERY_LIMIT),
            ),
        ]),
    ));

    // The import queue.
    // - quorum: replicated, and confirms mean "on disk on a majority", which is what a 200 to
    //   Aircall promises;
    // - x-delivery-limit: a message redelivered this many times (a job that kills its worker)
    //   is dead-lettered instead of looping forever;
    // - dead-lettering "at-least-once" (needs x-overflow reject-publish): RabbitMQ keeps the
    //   message until the dead-letter queue confirmed it, so poison messages are never lost.
    queues.push((
        names.import.clone(),
        arguments(vec![
            ("x-queue-type", text("quorum")),
            (
                "x-delivery-limit",
                AMQPValue::LongUInt(settings.delivery_limit),
            ),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&names.dead)),
            ("x-dead-letter-strategy", text("at-least-once")),
            ("x-overflow", text("reject-publish")),
        ]),
    ));

    // One delay queue per retry. No consumer: a message waits its TTL, then RabbitMQ
    // dead-letters it back to the import queue (at least once, as above).
    for (name, delay_ms) in names.retries.iter().zip(&settings.retry_delays_ms) {
        queues.push((
            name.clone(),
            arguments(vec![
                ("x-queue-type", text("quorum")),
                ("x-message-ttl", AMQPValue::LongLongInt(*delay_ms as i64)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text(&names.import)),
                ("x-dead-letter-strategy", text("at-least-once")),
                ("x-overflow", text("reject-publish")),
            ]),
        ));
    }
    queues
}

/// Declares every exchange and queue; safe to call from every process at every start.
pub async fn declare(
    channel: &Channel,
    names: &QueueNames,
    settings: &QueueSettings,
) -> Result<(), lapin::Error> {
    // Durable: the definitions survive a broker restart (the messages survive because they are
    // persistent and quorum queues write them to disk on every node).
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for (name, arguments) in queues(names, settings) {
        channel
            .queue_declare(name.as_str().into(), durable, arguments)
            .await?;
    }

    // Events for downstream consumers: a durable topic exchange; each consumer binds its own
    // queue (e.g. to `call.imported`), so this service never needs to know who listens. Its
    // alternate exchange takes what no queue is bound for, into a queue of its own, so an
    // event confirmed by RabbitMQ is never silently dropped (a consumer that binds late can
    // have them shovelled over).
    let exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.unrouted.as_str().into(),
            ExchangeKind::Fanout,
            exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.unrouted.as_str().into(),
            durable,
            arguments(vec![("x-queue-type", text("quorum"))]),
        )
        .await?;
    channel
        .queue_bind(
            names.unrouted.as_str().into(),
            names.unrouted.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            names.events.as_str().into(),
            ExchangeKind::Topic,
            exchange,
            arguments(vec![("alternate-exchange", text(&names.unrouted))]),
        )
        .await?;
    Ok(())
}
