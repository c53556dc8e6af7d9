//! `signpost run --user NAME`: started as root without systemd (an init script, a container),
//! bind port 53 first, then become `NAME` for good. Under systemd the unit's
//! `AmbientCapabilities=CAP_NET_BIND_SERVICE` and `User=` do this instead.

use nix::unistd::{Uid, User, setgid, setgroups, setuid};

/// Why the privileges could not be dropped (signpost then exits rather than run as root).
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("no such user: {0}")]
    NoUser(String),
    #[error("cannot look up user {name}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot switch to user {name} ({step}): {source}")]
    Switch {
        name: String,
        step: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// Become `name`: supplementary groups to just its primary group, then gid, then uid (in that
/// order: once the uid is not 0 the others can no longer change). glibc applies `setuid` to
/// every thread of the process, so the listener threads already running drop too. Checks
/// afterwards that root cannot be regained.
pub fn drop_to(name: &str) -> Result<(), PrivilegeError> {
    let user = User::from_name(name)
        .map_err(|source| PrivilegeError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| PrivilegeError::NoUser(name.to_owned()))?;
    let step = |step: &'static str| {
        move |source| PrivilegeError::Switch {
            name: name.to_owned(),
            step,
            source,
        }
    };
    setgroups(&[user.gid]).map_err(step("setgroups"))?;
    setgid(user.gid).map_err(step("setgid"))?;
    setuid(user.uid).map_err(step("setuid"))?;
    if !user.uid.is_root() && setuid(Uid::from_raw(0)).is_ok() {
        return Err(PrivilegeError::Switch {
            name: name.to_owned(),
            step: "verify",
            source: nix::Error::EPERM,
        });
    }
    Ok(())
}
