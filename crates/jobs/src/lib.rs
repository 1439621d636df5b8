#![doc = include_str!("../README.md")]

mod error;
mod job;
mod queue;
mod scripts;
mod worker;

pub use error::{Error, Result};
pub use job::{Backoff, Job, JobId, JobOptions, QueueName};
pub use queue::{JobState, JobStatus, Queue, QueueCounts};
pub use worker::{Handler, JobContext, JobError, Worker, WorkerConfig};
