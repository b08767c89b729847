//! Delivery: the scheduler, one attempt, the retry policy and the address guard.

pub mod attempt;
pub mod guard;
pub mod retry;
pub mod scheduler;

pub use scheduler::{Scheduler, SchedulerHandle};
