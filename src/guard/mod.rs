//! The guard against signing where the key already signs (issue 22): before
//! the key goes out, ask the chain whether a signer outside this host and
//! its lease uses the key.
//!
//! The rule exists ([`rule`], unit-tested) and the lease model checks it
//! with a rogue signer (`lease/model.rs`, `Guard::Rule`); nothing in the
//! run calls it yet: there is no RPC client, no setting and no step in the
//! run order, so no key delivery depends on it.
// The run does not call the rule yet (see above); the model and tests do.
#![cfg_attr(not(test), allow(dead_code))]

pub(crate) mod rule;
