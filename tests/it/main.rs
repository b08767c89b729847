//! Integration tests: one test binary, a module per area, real daemons on 127.0.0.1:0 and real receivers.

mod cli;
mod cluster;
mod config;
mod console;
mod crash;
mod delivery;
mod diskfull;
mod endpoint_stats;
mod fairness;
mod health;
mod input;
mod intake;
mod integrity;
mod notifications;
mod operate;
mod partition;
mod partner;
mod partner_tokens;
mod pgstore;
mod readme;
mod secrets;
mod smoke;
mod soak;
mod store_partners;
mod support;
mod tls;
