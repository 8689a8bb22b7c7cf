//! procfs (in progress)
