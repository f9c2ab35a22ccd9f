//! Where history lives: `DATABASE_URL` parsed into a backend and its
//! address.

use std::path::{Path, PathBuf};

/// The file name of the default SQLite database in the data directory.
pub const DEFAULT_SQLITE_FILE: &str = "chat.db";

/// Where history lives, as chosen by `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
    /// `sqlite://PATH`, or `$CHAT_DATA_DIR/chat.db` when unset.
    Sqlite(PathBuf),
}

impl Location {
    /// Parses `DATABASE_URL`; `None` selects SQLite in `data_dir`.
    pub fn parse(url: Option<&str>, data_dir: &Path) -> std::result::Result<Self, String> {
        match url {
            None => Ok(Location::Sqlite(data_dir.join(DEFAULT_SQLITE_FILE))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Location::Postgres(url.to_owned()))
            }
            Some(url) => match url.strip_prefix("sqlite://") {
                Some("") => Err("sqlite:// needs a path, e.g. sqlite://./chat.db".into()),
                Some(path) => Ok(Location::Sqlite(PathBuf::from(path))),
                None => Err("must start with postgres://, postgresql:// or sqlite://".into()),
            },
        }
    }

    /// The backend's name and where its data lives, for logs (without any
    /// password; a SQLite path made absolute, so an operator finds it).
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Location::Postgres(url) => ("PostgreSQL", redact_password(url)),
            Location::Sqlite(path) => (
                "SQLite",
                std::path::absolute(path)
                    .unwrap_or_else(|_| path.clone())
                    .display()
                    .to_string(),
            ),
        }
    }
}

/// `url` with any password replaced by `***`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let dir = Path::new("/data");
        assert_eq!(
            Location::parse(None, dir),
            Ok(Location::Sqlite("/data/chat.db".into()))
        );
        assert_eq!(
            Location::parse(Some("sqlite://./x.db"), dir),
            Ok(Location::Sqlite("./x.db".into()))
        );
        assert_eq!(
            Location::parse(Some("sqlite:///abs/x.db"), dir),
            Ok(Location::Sqlite("/abs/x.db".into()))
        );
        assert!(matches!(
            Location::parse(Some("postgresql://h/db"), dir),
            Ok(Location::Postgres(_))
        ));
        assert!(Location::parse(Some("sqlite://"), dir).is_err());
        assert!(Location::parse(Some("mysql://h/db"), dir).is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_password("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_password("postgres://h/db"), "postgres://h/db");
    }
}
