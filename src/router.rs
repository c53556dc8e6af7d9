//! router (to be written).
