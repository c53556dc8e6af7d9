//! answer table (to be written).
