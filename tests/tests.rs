//! The one integration binary; each module tests one part of signpost through its public API.

mod forward;
mod support;
