//! Finding PostgreSQL's server binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ErrorKind, FixtureError};

/// The programs a directory must hold to count as a server bindir.
const REQUIRED: [&str; 2] = ["postgres", "initdb"];

/// Finds the directory holding PostgreSQL's server binaries.
///
/// Looks, in order, at:
/// 1. the environment variable `PG_BINDIR` (when set, nothing else is tried),
/// 2. `pg_config --bindir`,
/// 3. the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout).
///
/// A directory counts when it holds both `postgres` and `initdb`.
pub fn find_bindir() -> Result<PathBuf, FixtureError> {
    find_bindir_in(default_candidates())
}

/// Returns the first of `candidates` that holds both `postgres` and `initdb`.
///
/// Fails with [`ErrorKind::NoServerBinaries`] and a message telling to
/// install Debian's package `postgresql` when none does.
pub fn find_bindir_in<I, P>(candidates: I) -> Result<PathBuf, FixtureError>
where
    I: IntoIterator<Item = P>,
    P: Into<PathBuf>,
{
    let mut searched = Vec::new();
    for candidate in candidates {
        let candidate = candidate.into();
        if has_server_binaries(&candidate) {
            return Ok(candidate);
        }
        searched.push(candidate.display().to_string());
    }
    let searched = if searched.is_empty() {
        "nowhere".to_owned()
    } else {
        searched.join(", ")
    };
    Err(FixtureError::new(
        ErrorKind::NoServerBinaries,
        format!(
            "no PostgreSQL server binaries (postgres, initdb) found (looked in: {searched}); \
             install Debian's package `postgresql` (e.g. `apt-get install -y postgresql`) \
             or point PG_BINDIR at the directory holding them"
        ),
    ))
}

fn has_server_binaries(dir: &Path) -> bool {
    REQUIRED.iter().all(|name| dir.join(name).is_file())
}

fn default_candidates() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return vec![PathBuf::from(dir)];
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !dir.is_empty() {
            candidates.push(PathBuf::from(dir));
        }
    }
    candidates.extend(versioned_bindirs(Path::new("/usr/lib/postgresql")));
    candidates
}

/// `<root>/<version>/bin` for every version directory, newest first.
fn versioned_bindirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bindir(root: &Path, name: &str, programs: &[&str]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for program in programs {
            std::fs::write(dir.join(program), "").unwrap();
        }
        dir
    }

    #[test]
    fn first_complete_candidate_wins() {
        let root = tempfile::tempdir().unwrap();
        let partial = fake_bindir(root.path(), "partial", &["postgres"]);
        let full = fake_bindir(root.path(), "full", &["postgres", "initdb"]);
        let other = fake_bindir(root.path(), "other", &["postgres", "initdb"]);
        assert_eq!(find_bindir_in([&partial, &full, &other]).unwrap(), full);
    }

    #[test]
    fn none_found_names_the_package() {
        let root = tempfile::tempdir().unwrap();
        let err = find_bindir_in([root.path()]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoServerBinaries);
        assert!(err.to_string().contains("`postgresql`"), "{err}");
        assert!(err.to_string().contains(&root.path().display().to_string()));
        let err = find_bindir_in(Vec::<PathBuf>::new()).unwrap_err();
        assert!(err.to_string().contains("apt-get install -y postgresql"));
    }

    #[test]
    fn versions_sort_newest_first() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "13", "notaversion"] {
            std::fs::create_dir(root.path().join(version)).unwrap();
        }
        let found = versioned_bindirs(root.path());
        let expected: Vec<PathBuf> = ["15", "13", "9.6"]
            .iter()
            .map(|v| root.path().join(v).join("bin"))
            .collect();
        assert_eq!(found, expected);
    }
}
