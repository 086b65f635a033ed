//! envup: declarative dev environments — VMs, jails and containers from one
//! Envfile, provisioned over SSH.

pub mod envfile;
