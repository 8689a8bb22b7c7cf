//! notify (in progress)
