//! Shared test support: fakes of the things signpost talks to.

pub(crate) mod fake_upstream;
