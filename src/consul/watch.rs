//! The catalog feed (to be written).
