//! Delivery: the scheduler, one attempt, the retry policy, the sharing of attempt slots and the address guard.

pub mod attempt;
pub mod fairness;
pub mod guard;
pub mod retry;
pub mod scheduler;

pub use scheduler::{Scheduler, SchedulerHandle, Scope};
