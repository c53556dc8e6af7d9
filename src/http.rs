//! http (to be written).
