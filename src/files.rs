//! chatd's files on disk: created for its own user only (0600 files, 0700 directories), whatever the umask.
//!
//! chatd never changes the permissions of a file or directory it did not
//! create: an operator may have opened one on purpose (a backup user's group,
//! a mounted volume). It warns at start-up instead, naming the path and the
//! `chmod` that closes it.

use std::io;
use std::path::Path;

/// The mode of every directory chatd creates.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// The mode of every file chatd creates (the secret, the SQLite database;
/// SQLite gives its `-wal` and `-shm` files the database file's mode).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each with mode 0700 whatever the
/// umask. Directories that exist are left alone. Returns whether `dir` itself
/// was created.
pub fn create_private_dir(dir: &Path) -> io::Result<bool> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(false);
    }
    if let Some(parent) = dir.parent() {
        create_private_dir(parent)?;
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR_MODE);
    match builder.create(dir) {
        Ok(()) => {
            // The umask may have taken bits away; it cannot have added any,
            // but set the mode exactly so that chatd can use what it made.
            set_mode(dir, PRIVATE_DIR_MODE)?;
            Ok(true)
        }
        // Another process made it meanwhile: theirs, leave it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `path` empty with mode 0600 whatever the umask, unless it exists.
/// Returns whether it was created.
pub fn create_private_file(path: &Path) -> io::Result<bool> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE_MODE);
    match options.open(path) {
        Ok(_) => {
            set_mode(path, PRIVATE_FILE_MODE)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// The permission bits of `path` when other users (group or other) have
/// any; `None` when they have none, when it does not exist, or when the
/// platform has no such bits.
pub fn shared_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
        Some(mode).filter(|mode| mode & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Logs one warning for each of `paths` (chatd's own files and the
/// directories that hold them) that other users can access. Missing paths
/// and duplicates are skipped.
pub fn warn_if_shared(paths: &[&Path]) {
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        if !seen.insert(*path) {
            continue;
        }
        let Some(mode) = shared_mode(path) else {
            continue;
        };
        let wanted = if path.is_dir() {
            PRIVATE_DIR_MODE
        } else {
            PRIVATE_FILE_MODE
        };
        tracing::warn!(
            path = %path.display(),
            mode = %format_args!("{mode:o}"),
            "other users can access this path; chatd only restricts what it creates: run `chmod {wanted:o} {}`",
            path.display()
        );
    }
}

/// Warns about chatd's own files that other users can access, and the
/// directories holding them: the secret file and the SQLite database with its
/// `-wal` and `-shm` files (made by an older chatd, or opened by an operator).
pub fn warn_if_exposed(secret: Option<&Path>, sqlite_db: Option<&Path>) {
    let mut paths: Vec<std::path::PathBuf> = Vec::new();
    if let Some(secret) = secret {
        paths.extend(secret.parent().map(Into::into));
        paths.push(secret.into());
    }
    if let Some(db) = sqlite_db.and_then(|db| std::path::absolute(db).ok()) {
        paths.extend(db.parent().map(Into::into));
        for suffix in ["-wal", "-shm"] {
            let mut name = db.clone().into_os_string();
            name.push(suffix);
            paths.push(name.into());
        }
        paths.push(db);
    }
    let paths: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
    warn_if_shared(&paths);
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_dirs_and_files_and_leaves_existing_ones() {
        let base = std::env::temp_dir().join(format!("chatd-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();

        let deep = base.join("a").join("b");
        assert!(create_private_dir(&deep).unwrap());
        assert_eq!(mode(&base.join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        assert!(!create_private_dir(&deep).unwrap());
        assert_eq!(mode(&base), 0o755, "an existing directory is left alone");
        assert_eq!(shared_mode(&base), Some(0o755));
        assert_eq!(shared_mode(&deep), None);

        let file = deep.join("f");
        assert!(create_private_file(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!create_private_file(&file).unwrap());
        assert_eq!(mode(&file), 0o644, "an existing file is left alone");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
