//! RabbitMQ: the messages (`message.rs`), the topology every role declares (`topology.rs`), the
//! supervised connection and confirmed publishing (`broker.rs`), and the Redis spool that holds
//! jobs while RabbitMQ cannot confirm them (`spool.rs`).

pub mod broker;
pub mod dead_letters;
pub mod message;
pub mod spool;
pub mod topology;

pub use broker::{Broker, PublishError};
pub use message::{IMPORT_JOB_VERSION, ImportJob, JobFailure, Message, Trigger};
pub use spool::Spool;
pub use topology::QueueNames;
