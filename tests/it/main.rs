//! Integration tests: one test binary, a module per area, real daemons on 127.0.0.1:0 and real receivers.

mod support;
mod smoke;
mod intake;
mod config;
mod partner;
mod cli;
mod delivery;
mod crash;
mod operate;
