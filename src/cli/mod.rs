//! Command-line subcommands that are not the daemon itself.
pub mod admin;
pub mod migrate;
pub mod partner;
