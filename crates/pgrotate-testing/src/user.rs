//! The OS user the server runs as: PostgreSQL refuses to run as root, so a
//! root test process runs it as `nobody`.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Fallback uid/gid of `nobody` / `nogroup`.
const NOBODY: u32 = 65534;

/// The unprivileged user server processes are switched to, or none when the
/// test process is not root (then they run as the test process's user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerUser {
    uid: u32,
    gid: u32,
}

impl ServerUser {
    /// `Some(nobody)` when running as root, `None` otherwise.
    pub(crate) fn detect() -> Option<ServerUser> {
        if effective_uid()? != 0 {
            return None;
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        Some(nobody_from(&passwd, &group))
    }

    /// Makes `cmd` run as this user.
    pub(crate) fn apply(user: Option<ServerUser>, cmd: &mut Command) {
        if let Some(user) = user {
            cmd.uid(user.uid).gid(user.gid);
        }
    }

    /// Hands `path` to this user (no-op when not root).
    pub(crate) fn chown(user: Option<ServerUser>, path: &Path) -> io::Result<()> {
        match user {
            Some(user) => std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)),
            None => Ok(()),
        }
    }
}

/// The effective uid, read without `unsafe`: `/proc/self` belongs to it; off
/// Linux, `id -u` tells.
fn effective_uid() -> Option<u32> {
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Some(meta.uid());
    }
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn nobody_from(passwd: &str, group: &str) -> ServerUser {
    let entry = |file: &str, name: &str| -> Option<Vec<String>> {
        file.lines()
            .map(|line| line.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|fields| fields.first().is_some_and(|n| n == name))
    };
    let field = |fields: &Option<Vec<String>>, i: usize| -> Option<u32> {
        fields.as_ref()?.get(i)?.parse().ok()
    };
    let user = entry(passwd, "nobody");
    let uid = field(&user, 2).unwrap_or(NOBODY);
    let gid = field(&user, 3)
        .or_else(|| field(&entry(group, "nogroup"), 2))
        .or_else(|| field(&entry(group, "nobody"), 2))
        .unwrap_or(NOBODY);
    ServerUser { uid, gid }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nobody_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65000:65001::/:/sbin/nologin\n";
        assert_eq!(
            nobody_from(passwd, ""),
            ServerUser {
                uid: 65000,
                gid: 65001
            }
        );
    }

    #[test]
    fn falls_back_to_group_then_default() {
        assert_eq!(
            nobody_from("", "nogroup:x:4242:\n"),
            ServerUser {
                uid: NOBODY,
                gid: 4242
            }
        );
        assert_eq!(
            nobody_from("", ""),
            ServerUser {
                uid: NOBODY,
                gid: NOBODY
            }
        );
    }
}
