//! emit (to be written).
