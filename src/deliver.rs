//! deliver (in progress)
