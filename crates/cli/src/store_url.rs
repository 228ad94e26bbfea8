//! Which job store the `database` setting (`--db`, `PROXY_RUNNER_DB`) names:
//! the URL scheme picks the adapter, and anything unclear is an error at
//! start instead of a SQLite file with a surprising name.
//!
//! - `postgres://...` or `postgresql://...` (any case): PostgreSQL;
//! - `:memory:`, `sqlite::memory:`: a private in-memory SQLite database;
//! - `sqlite:PATH`, `sqlite://PATH` or a plain path: a SQLite file;
//! - any other `scheme://...`: an error naming the scheme.

use std::fmt;
use std::path::{Path, PathBuf};

/// The job store a `database` setting names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A PostgreSQL server, by its URL (which may hold a password: show it
    /// with [`shown`] only).
    Postgres(String),
    /// A SQLite database file (created if missing).
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database.
    SqliteMemory,
}

/// Why a `database` setting names no store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrlError {
    Empty,
    /// A `scheme://` URL of a database proxy-runner has no adapter for.
    UnknownScheme(String),
    /// `postgres:` without `//`: almost surely a mistyped URL, not a file.
    MalformedPostgres,
    /// `sqlite:...?...`: connection options are not supported.
    SqliteOptions,
}

impl fmt::Display for StoreUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KNOWN: &str =
            "use postgres://user@host:port/database, sqlite:PATH, a file path or :memory:";
        match self {
            StoreUrlError::Empty => write!(f, "the database setting is empty; {KNOWN}"),
            StoreUrlError::UnknownScheme(scheme) => write!(
                f,
                "the database URL has the scheme {scheme:?}, which names no supported store; {KNOWN}"
            ),
            StoreUrlError::MalformedPostgres => write!(
                f,
                "the database setting starts with a PostgreSQL scheme but not with \"://\"; {KNOWN}"
            ),
            StoreUrlError::SqliteOptions => write!(
                f,
                "a sqlite: database takes a path only, no \"?\" options; {KNOWN}"
            ),
        }
    }
}

impl std::error::Error for StoreUrlError {}

/// Maps the `database` setting to the store it names.
pub fn store_location(database: &Path) -> Result<StoreLocation, StoreUrlError> {
    // A path that is not UTF-8 can only be a file.
    let Some(text) = database.to_str() else {
        return Ok(StoreLocation::SqliteFile(database.to_path_buf()));
    };
    if text.is_empty() {
        return Err(StoreUrlError::Empty);
    }
    if text == ":memory:" {
        return Ok(StoreLocation::SqliteMemory);
    }
    if let Some(scheme) = url_scheme(text) {
        let lower = scheme.to_ascii_lowercase();
        return match lower.as_str() {
            "postgres" | "postgresql" => Ok(StoreLocation::Postgres(text.to_string())),
            "sqlite" => sqlite(&text[scheme.len() + "://".len()..]),
            _ => Err(StoreUrlError::UnknownScheme(scheme.to_string())),
        };
    }
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("postgres:") || lower.starts_with("postgresql:") {
        return Err(StoreUrlError::MalformedPostgres);
    }
    if lower.starts_with("sqlite:") {
        return sqlite(&text["sqlite:".len()..]);
    }
    Ok(StoreLocation::SqliteFile(database.to_path_buf()))
}

/// The `database` setting as it may be logged: a URL's password is hidden.
pub fn shown(database: &Path) -> String {
    let text = database.to_string_lossy();
    let Some(scheme) = url_scheme(&text) else {
        return text.into_owned();
    };
    let rest = &text[scheme.len() + "://".len()..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => text.into_owned(),
    }
}

/// The scheme of a `scheme://...` URL (RFC 3986: a letter, then letters,
/// digits, `+`, `-` or `.`).
fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

fn sqlite(rest: &str) -> Result<StoreLocation, StoreUrlError> {
    if rest.contains('?') {
        return Err(StoreUrlError::SqliteOptions);
    }
    match rest {
        "" => Err(StoreUrlError::Empty),
        ":memory:" => Ok(StoreLocation::SqliteMemory),
        path => Ok(StoreLocation::SqliteFile(PathBuf::from(path))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(s: &str) -> Result<StoreLocation, StoreUrlError> {
        store_location(Path::new(s))
    }

    fn file(s: &str) -> Result<StoreLocation, StoreUrlError> {
        Ok(StoreLocation::SqliteFile(PathBuf::from(s)))
    }

    #[test]
    fn postgres_urls_select_postgresql() {
        for url in [
            "postgres://user@host:5432/db",
            "postgresql://user:pw@db.example/jobs?sslmode=disable",
            "POSTGRES://host/db",
            "postgres://",
        ] {
            assert_eq!(
                location(url),
                Ok(StoreLocation::Postgres(url.into())),
                "{url}"
            );
        }
    }

    #[test]
    fn paths_and_sqlite_urls_select_sqlite() {
        assert_eq!(location("proxy-runner.db"), file("proxy-runner.db"));
        assert_eq!(
            location("/var/lib/proxy-runner/jobs.db"),
            file("/var/lib/proxy-runner/jobs.db")
        );
        assert_eq!(location("./data/jobs.db"), file("./data/jobs.db"));
        assert_eq!(location("sqlite:jobs.db"), file("jobs.db"));
        assert_eq!(location("sqlite://data/jobs.db"), file("data/jobs.db"));
        assert_eq!(
            location("sqlite:///var/lib/jobs.db"),
            file("/var/lib/jobs.db")
        );
        assert_eq!(location("SQLite:jobs.db"), file("jobs.db"));
        // A colon inside a file name is still a file name.
        assert_eq!(location("jobs:2024.db"), file("jobs:2024.db"));
    }

    #[test]
    fn memory_selects_an_in_memory_sqlite_store() {
        for s in [":memory:", "sqlite::memory:", "sqlite://:memory:"] {
            assert_eq!(location(s), Ok(StoreLocation::SqliteMemory), "{s}");
        }
    }

    #[test]
    fn other_schemes_are_errors_naming_the_scheme() {
        for (url, scheme) in [
            ("mysql://user@host/db", "mysql"),
            ("file:///var/lib/jobs.db", "file"),
            ("redis://localhost", "redis"),
            ("postgres+tls://host/db", "postgres+tls"),
        ] {
            let err = location(url).unwrap_err();
            assert_eq!(err, StoreUrlError::UnknownScheme(scheme.into()));
            assert!(err.to_string().contains(&format!("{scheme:?}")), "{err}");
            assert!(
                err.to_string().contains("postgres://"),
                "says what works: {err}"
            );
        }
    }

    #[test]
    fn unclear_settings_are_errors() {
        assert_eq!(location(""), Err(StoreUrlError::Empty));
        assert_eq!(location("sqlite:"), Err(StoreUrlError::Empty));
        assert_eq!(
            location("postgres:/host/db"),
            Err(StoreUrlError::MalformedPostgres)
        );
        assert_eq!(
            location("postgresql:host"),
            Err(StoreUrlError::MalformedPostgres)
        );
        assert_eq!(
            location("sqlite://jobs.db?mode=rwc"),
            Err(StoreUrlError::SqliteOptions)
        );
        for err in [
            StoreUrlError::Empty,
            StoreUrlError::MalformedPostgres,
            StoreUrlError::SqliteOptions,
        ] {
            assert!(
                err.to_string().contains(":memory:"),
                "says what works: {err}"
            );
        }
    }

    #[test]
    fn a_path_that_is_not_utf8_is_a_file() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(OsStr::from_bytes(b"jobs-\xff.db"));
        assert_eq!(
            store_location(path),
            Ok(StoreLocation::SqliteFile(path.to_path_buf()))
        );
    }

    #[test]
    fn shown_hides_a_urls_password_only() {
        let shown = |s: &str| shown(Path::new(s));
        assert_eq!(
            shown("postgres://app:s3cr%40t@db.example:5432/jobs?sslmode=require"),
            "postgres://app:***@db.example:5432/jobs?sslmode=require"
        );
        assert_eq!(
            shown("postgres://app:a@b@host/db"),
            "postgres://app:***@host/db"
        );
        assert_eq!(shown("postgres://app@host/db"), "postgres://app@host/db");
        assert_eq!(shown("postgresql://host/db"), "postgresql://host/db");
        assert_eq!(
            shown("/var/lib/proxy-runner/jobs.db"),
            "/var/lib/proxy-runner/jobs.db"
        );
        assert_eq!(shown(":memory:"), ":memory:");
    }
}
