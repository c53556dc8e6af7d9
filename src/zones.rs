//! zones (to be written).
