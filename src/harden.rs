//! harden (in progress)
