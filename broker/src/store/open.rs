//! Opening a store from its URL (`sqlite://PATH`, `postgres://…`): for a
//! broker (migrated, its replica's chain), or for a reader (as it is).

use super::{Result, Store, StoreError, migrations, postgres, sqlite};

/// Opens the store a URL names: `sqlite://PATH` or `postgres://…`
/// (`postgresql://…`), migrated and ready. The one place a store URL is
/// turned into a store for a broker; readers use [`open_existing`].
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    match Backend::of(url)? {
        Backend::Sqlite(path) => Ok(std::sync::Arc::new(sqlite::SqliteStore::open(
            std::path::Path::new(path),
        )?)),
        Backend::Postgres => Ok(std::sync::Arc::new(
            postgres::PostgresStore::connect(url).await?,
        )),
    }
}

/// Opens an existing store to read it (offline `whatif`, `logs verify
/// --store`): it must be a Mintguard store at this build's schema version,
/// and nothing is created or migrated (a newer CLI never changes the
/// schema under an older broker).
pub async fn open_existing(url: &str) -> Result<std::sync::Arc<dyn Store>> {
    match Backend::of(url)? {
        Backend::Sqlite(path) => Ok(std::sync::Arc::new(sqlite::SqliteStore::open_with(
            std::path::Path::new(path),
            migrations::SchemaUse::Existing,
        )?)),
        Backend::Postgres => Ok(std::sync::Arc::new(
            postgres::PostgresStore::connect_existing(url).await?,
        )),
    }
}

/// [`open`] for the broker whose instance id is `instance`: on a store
/// several replicas share (PostgreSQL) it appends to a chain of its own,
/// named `instance` ([`crate::log`]); SQLite has one broker and one chain.
pub async fn open_replica(url: &str, instance: &str) -> Result<std::sync::Arc<dyn Store>> {
    match Backend::of(url)? {
        Backend::Sqlite(_) => open(url).await,
        Backend::Postgres => Ok(std::sync::Arc::new(
            postgres::PostgresStore::connect_replica(url, instance).await?,
        )),
    }
}

/// Checks a store URL without connecting (configuration validation): its
/// scheme, and for PostgreSQL its connection settings and TLS files.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    match Backend::of(url) {
        Ok(Backend::Sqlite(_)) => Ok(()),
        Ok(Backend::Postgres) => postgres::connection(url)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(StoreError::Setup(reason)) => Err(reason),
        Err(e) => Err(e.to_string()),
    }
}

/// Which backend a store URL names.
enum Backend<'a> {
    Sqlite(&'a str),
    Postgres,
}

impl<'a> Backend<'a> {
    fn of(url: &'a str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            Ok(Self::Sqlite(path))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            // Only the scheme is echoed: the rest may hold a password.
            let scheme = url.split_once("://").map_or("(none)", |(scheme, _)| scheme);
            Err(StoreError::Setup(format!(
                "the store URL's scheme {:?} is not sqlite:// or postgres://",
                crate::ids::excerpt(scheme)
            )))
        }
    }
}
