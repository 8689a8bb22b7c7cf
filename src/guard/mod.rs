//! The guard against signing where the key already signs (issue 22): before
//! the key goes out, ask the chain whether a signer outside this host and
//! its lease uses the key.
//!
//! Only the rule exists so far ([`rule`], unit-tested): nothing in the run
//! calls it yet, there is no RPC client, no setting and no model of it. It is
//! not a guard until those exist; until then no key delivery depends on it.
// The run does not call the rule yet (see above); its tests do.
#![cfg_attr(not(test), allow(dead_code))]

pub(crate) mod rule;
