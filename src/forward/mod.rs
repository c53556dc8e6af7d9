//! Forwarding (to be written).
