#![doc = include_str!("../README.md")]

mod client;
mod config;
mod connector;
mod error;
mod handler;
mod job;
mod ops;
mod queue;
mod registry;
mod repeat;
mod schedule;
mod scripts;
mod worker;

pub use client::{Jobs, Subscription};
pub use config::{DEFAULT_KEEP_DEAD, DEFAULT_KEEP_DEAD_FOR, WorkerConfig};
pub use connector::Connector;
pub use error::{Error, Result};
pub use handler::{Handler, JobContext, JobError};
pub use job::{Backoff, Job, JobId, JobOptions, QueueName};
pub use ops::Metric;
pub use queue::{JobState, JobStatus, Queue, QueueCounts, QueueEvent};
pub use registry::WorkerInfo;
pub use repeat::Repeatable;
pub use schedule::{Cron, Schedule};
pub use worker::Worker;
