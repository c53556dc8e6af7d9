//! name grammar (to be written).
