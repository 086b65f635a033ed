//! envup: declarative dev environments — VMs, jails and containers from one
//! Envfile, provisioned over SSH.

pub mod backend;
pub mod boxes;
pub mod cli;
pub mod contained;
pub mod envfile;
pub mod fault;
pub mod host;
pub mod ident;
pub mod network;
pub mod ops;
pub mod orchestrate;
pub mod plan;
pub mod provision;
pub mod relocate;
pub mod ssh;
pub mod state;
pub mod ui;
pub mod userns;
