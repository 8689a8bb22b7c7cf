//! Shared helpers for the end-to-end tests; each test file includes it with `mod support;`.
//!
//! Everything here uses real parts: moto's server for AWS (reached only through the Rust
//! SDK), freshly generated keys checked against an independent implementation
//! (tendermint-rs), the node/cosmovisor stand-ins built as cargo examples, and `/proc` read
//! with the library's own `procfs` where the tests only list processes.
//!
//! - `aws`: moto, the SDK clients, the test credentials
//! - `keys`: validator keys and the no-secret assertions
//! - `home`: a node home and what a test checks of its key slot
//! - `tool`: running our binary and the stand-ins, bounded waits, our JSON log
//! - `procs`: `/proc`, other users, cgroups, killing strays
//! - `prom`: the metrics textfile and endpoint, parsed by the Python client's parsers
//! - `watch`: watcher threads (the key path missing for an instant, a directory changed)
//! - `fake_ssm`: one crafted SSM answer to every request
//! - `cometbft`: the CometBFT RPC stand-in and a scripted chain, for the guard
//! - `lease`, `cluster`, `nemesis`, `checker`, `proxy`: the failover lease and chaos tests
//! - `systemd`: a real systemd in namespaces

// Inherent: every integration test is its own crate that compiles this whole module and
// uses only part of it, so what one test file leaves unused is not dead code.
#![allow(dead_code)]

mod aws;
mod cometbft;
mod fake_ssm;
mod home;
mod keys;
mod procs;
mod prom;
mod proxy;
mod tool;
mod watch;

pub mod checker;
pub mod cluster;
pub mod lease;
pub mod nemesis;
pub mod systemd;

// One flat namespace for the test files (`use support::*`). The allow is inherent, as
// dead_code above: a test crate that uses nothing of a module leaves its re-export unused.
#[allow(unused_imports)]
pub use self::{
    aws::*, cometbft::*, fake_ssm::*, home::*, keys::*, procs::*, prom::*, proxy::*, tool::*,
    watch::*,
};
