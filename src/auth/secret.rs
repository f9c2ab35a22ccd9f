//! The token secret: `CHAT_JWT_SECRET`, or a 0600 file in the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The shortest secret chatd accepts, in bytes.
pub const SECRET_MIN_BYTES: usize = 16;
/// The file in the data directory that holds a generated secret.
pub const SECRET_FILE: &str = "jwt-secret";

/// Where a secret came from, for the start-up log. Paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env,
    File(PathBuf),
    Generated(PathBuf),
}

impl SecretSource {
    /// The secret file, when there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            SecretSource::Env => None,
            SecretSource::File(path) | SecretSource::Generated(path) => Some(path),
        }
    }
}

/// `data_dir/SECRET_FILE` as an absolute path (relative paths are taken
/// from the current directory), for messages an operator can act on.
fn secret_path(data_dir: &Path) -> Result<PathBuf> {
    std::path::absolute(data_dir.join(SECRET_FILE)).map_err(|e| {
        Error::Config(format!(
            "CHAT_DATA_DIR: cannot resolve {}: {e}",
            data_dir.display()
        ))
    })
}

/// The configured secret, or the one kept in `data_dir`. Never creates
/// anything: this is what `chatd token` uses, and a secret it made up would
/// sign tokens that no server accepts.
pub fn load_secret(configured: Option<&str>, data_dir: &Path) -> Result<(Vec<u8>, SecretSource)> {
    if let Some(secret) = configured {
        return configured_secret(secret);
    }
    let path = secret_path(data_dir)?;
    match read_secret_file(&path)? {
        Some(secret) => Ok((secret, SecretSource::File(path))),
        None => Err(Error::Config(format!(
            "no token secret: CHAT_JWT_SECRET is not set and {} does not exist. \
             Set CHAT_DATA_DIR (or --data-dir) to the server's data directory, where the server \
             creates the secret on first start, or set CHAT_JWT_SECRET to the server's secret",
            path.display()
        ))),
    }
}

/// What the server uses: the configured secret, or the one kept in
/// `data_dir`, created on first start with mode 0600 (and the directory
/// with mode 0700 when it is missing).
pub fn load_or_generate_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> Result<(Vec<u8>, SecretSource)> {
    if let Some(secret) = configured {
        return configured_secret(secret);
    }
    let path = secret_path(data_dir)?;
    if let Some(secret) = read_secret_file(&path)? {
        return Ok((secret, SecretSource::File(path)));
    }
    let config_err = |what: &str, e: std::io::Error| {
        Error::Config(format!(
            "CHAT_DATA_DIR: cannot {what} {}: {e}",
            path.display()
        ))
    };
    if let Some(dir) = path.parent() {
        crate::files::create_private_dir(dir)
            .map_err(|e| config_err("create the directory of", e))?;
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, crate::files::PRIVATE_FILE_MODE);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| config_err("write", e))?;
            Ok((secret.into_bytes(), SecretSource::Generated(path)))
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_secret(None, data_dir),
        Err(e) => Err(config_err("create", e)),
    }
}

fn configured_secret(secret: &str) -> Result<(Vec<u8>, SecretSource)> {
    if secret.len() < SECRET_MIN_BYTES {
        return Err(Error::Config(format!(
            "CHAT_JWT_SECRET: must be at least {SECRET_MIN_BYTES} bytes"
        )));
    }
    Ok((secret.as_bytes().to_vec(), SecretSource::Env))
}

/// The secret in the file at `path`, or `None` when there is no such file.
fn read_secret_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let secret = text.trim();
            if secret.len() < SECRET_MIN_BYTES {
                return Err(Error::Config(format!(
                    "{}: secret must be at least {SECRET_MIN_BYTES} bytes; delete the file to generate a new one",
                    path.display()
                )));
            }
            Ok(Some(secret.as_bytes().to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Config(format!(
            "CHAT_DATA_DIR: cannot read {}: {e}",
            path.display()
        ))),
    }
}
