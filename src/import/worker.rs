//! The `worker` role's consumer: takes import jobs from RabbitMQ and runs each through
//! [`Importer::process`], at most `worker.concurrency` at once.
//!
//! AMQP discipline:
//! - manual acknowledgements, and exactly one settlement per delivery: `ack` once the job is
//!   settled (done, or re-published to a retry or the dead-letter queue with a confirm), `nack`
//!   with requeue when that settlement could not be published or the worker is stopping, `nack`
//!   without requeue (RabbitMQ dead-letters it) for a body no version of this service can read;
//! - a prefetch of `worker.prefetch`, so RabbitMQ never hands one worker more than it can
//!   start soon; re-applied after lapin recovers the channel;
//! - a consumer RabbitMQ cancels (queue deleted, node failover) is subscribed again, and a
//!   channel that cannot be recovered is replaced by a new one on the broker's current link.
//!
//! On shutdown it stops consuming, lets in-flight imports finish until
//! `worker.shutdown_timeout_ms`, then abandons the rest unacknowledged: RabbitMQ redelivers
//! them to another worker, and the per-call lease plus the outcome records make that safe.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::job::{Importer, Report, error_chain};
use crate::config::WorkerSettings;
use crate::queue::{Broker, Message};

/// Runs the consumer until `cancel` fires, then drains.
pub async fn run(
    importer: Importer,
    broker: Broker,
    settings: WorkerSettings,
    cancel: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let mut tasks = JoinSet::new();
    let queue = broker.names().import.clone();
    'subscribe: while !cancel.is_cancelled() {
        let (channel, mut consumer) = match subscribe(&broker, &queue, settings.prefetch).await {
            Ok(subscribed) => subscribed,
            Err(e) => {
                debug!(error = %e, "cannot consume yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    () = cancel.cancelled() => break,
                }
            }
        };
        info!(
            queue,
            prefetch = settings.prefetch,
            concurrency = settings.concurrency,
            "consuming import jobs"
        );
        loop {
            // Reap finished tasks so the set does not grow with the jobs done.
            while tasks.try_join_next().is_some() {}
            // A free slot first, so a delivery never waits for one, and SIGTERM is heard even
            // while every slot is busy.
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot,
                () = cancel.cancelled() => {
                    stop_consuming(&channel, &consumer, &mut tasks, settings.shutdown_timeout()).await;
                    break 'subscribe;
                }
            };
            let Ok(slot) = slot else {
                break 'subscribe;
            };
            let next = tokio::select! {
                next = consumer.next() => next,
                () = cancel.cancelled() => {
                    stop_consuming(&channel, &consumer, &mut tasks, settings.shutdown_timeout()).await;
                    break 'subscribe;
                }
            };
            match next {
                Some(Ok(delivery)) => {
                    let importer = importer.clone();
                    tasks.spawn(async move {
                        settle(&importer, delivery).await;
                        drop(slot);
                    });
                }
                Some(Err(e)) => {
                    warn!(error = %e, "the consumer's channel failed; waiting for recovery");
                    let recovered = tokio::select! {
                        recovered = channel.wait_for_recovery(e) => recovered,
                        () = cancel.cancelled() => break 'subscribe,
                    };
                    match recovered {
                        Ok(()) => {
                            // lapin replays the QoS too; setting it again costs one round trip
                            // and does not depend on that.
                            if let Err(e) = channel
                                .basic_qos(settings.prefetch, BasicQosOptions::default())
                                .await
                            {
                                warn!(error = %e, "cannot re-apply the prefetch; opening a new channel");
                                continue 'subscribe;
                            }
                            info!("channel recovered; prefetch re-applied");
                        }
                        Err(e) => {
                            warn!(error = %e, "the channel cannot be recovered; opening a new one");
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                channel.close(200, "replaced".into()),
                            )
                            .await;
                            continue 'subscribe;
                        }
                    }
                }
                None => {
                    warn!("RabbitMQ cancelled the consumer; subscribing again");
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        channel.close(200, "resubscribing".into()),
                    )
                    .await;
                    continue 'subscribe;
                }
            }
        }
    }
    drain(&mut tasks, settings.shutdown_timeout()).await;
    info!("worker stopped");
}

/// Stops deliveries, lets in-flight imports finish (see [`drain`]) and closes the channel:
/// what was prefetched but not started goes back to the queue.
async fn stop_consuming(
    channel: &Channel,
    consumer: &Consumer,
    tasks: &mut JoinSet<()>,
    deadline: Duration,
) {
    let tag = consumer.tag();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
    )
    .await;
    drain(tasks, deadline).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        channel.close(200, "worker stopping".into()),
    )
    .await;
}

/// A channel with the prefetch set, consuming `queue` with manual acks.
async fn subscribe(
    broker: &Broker,
    queue: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), Box<dyn std::error::Error + Send + Sync>> {
    let channel = broker.channel().await?;
    broker.declare_topology(&channel).await?;
    // global = false: the limit applies per consumer, which is the one on this channel.
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            format!("worker-{}", crate::queue::message::new_job_id()).into(),
            // no_ack = false: a job is acknowledged only once settled.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Lets in-flight imports finish until `deadline`, then abandons them unacknowledged.
async fn drain(tasks: &mut JoinSet<()>, deadline: Duration) {
    if tasks.is_empty() {
        return;
    }
    info!(
        in_flight = tasks.len(),
        ?deadline,
        "waiting for in-flight imports"
    );
    let finished = tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        warn!(
            abandoned = tasks.len(),
            "imports still running at the shutdown deadline are abandoned; RabbitMQ will redeliver them"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Runs one delivery and settles it exactly once.
async fn settle(importer: &Importer, delivery: Delivery) {
    let job = match Message::decode(&delivery.data) {
        Ok(Message::ImportCall(job)) => job,
        Err(e) => {
            error!(error = %e, "unreadable message; dead-lettered by RabbitMQ");
            crate::metrics::job("dead_lettered", "unreadable");
            let reject = BasicNackOptions {
                requeue: false,
                ..BasicNackOptions::default()
            };
            if let Err(e) = delivery.nack(reject).await {
                warn!(error = %e, "cannot reject the message; it will be redelivered");
            }
            return;
        }
    };
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    crate::metrics::job_taken(std::time::Duration::from_millis(
        now_ms.saturating_sub(job.received_at_ms).max(0) as u64,
    ));
    let span = info_span!(
        "import",
        connection = %job.connection_id,
        call_id = job.call_id.0,
        job_id = %job.job_id,
        request_id = job.request_id.as_deref().unwrap_or(""),
        attempt = job.attempt,
        trigger = ?job.trigger,
    );
    async move {
        // A panic in an import must not leave its delivery unsettled (holding a prefetch slot
        // until the channel closes): it is given back, and RabbitMQ's delivery limit
        // dead-letters a job that panics every time.
        let processed = std::panic::AssertUnwindSafe(importer.process(job))
            .catch_unwind()
            .await;
        let settled = match processed {
            Err(_) => {
                error!("the import panicked; giving the job back");
                crate::metrics::job("requeued", "panic");
                false
            }
            Ok(Ok(Report::Requeue(e))) => {
                debug!(error = %e, "stopping; job given back");
                false
            }
            Ok(Ok(report)) => {
                log_report(&report);
                true
            }
            Ok(Err(e)) => {
                warn!(error = %error_chain(&e), "cannot settle the job through RabbitMQ; giving it back");
                false
            }
        };
        let result = if settled {
            delivery.ack(BasicAckOptions::default()).await
        } else {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        };
        match result {
            Ok(true) => {}
            // The channel was recovered since the delivery (its tag is void) or is gone:
            // RabbitMQ redelivers the job, and the outcome records make the second run a no-op
            // if this one finished.
            Ok(false) => warn!("the delivery's channel was recovered since; RabbitMQ will redeliver the job"),
            Err(e) => warn!(error = %e, "cannot settle the delivery; it will be redelivered"),
        }
    }
    .instrument(span)
    .await;
}

fn log_report(report: &Report) {
    match report {
        Report::Done(handled) => debug!(?handled, "job done"),
        Report::Deferred => debug!("call busy in another worker; job deferred"),
        Report::Retrying { attempt, error } => warn!(
            attempt,
            code = error.code(),
            error = %error_chain(error),
            "import failed; retrying later"
        ),
        Report::DeadLettered(error) => error!(
            code = error.code(),
            error = %error_chain(error),
            "import failed for good; job moved to the dead-letter queue"
        ),
        Report::Requeue(_) => {}
    }
}
