use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::crypto::EnvdTokenCipher;
use super::debounce::Debouncer;
use super::error::DbError;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Waiting for SQLite's write lock instead of failing at once with SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How to open the database.
pub struct DbConfig {
    /// `DATABASE_URL`. `postgres://` / `postgresql://` selects PostgreSQL; `None` (or an empty
    /// string) means SQLite at `<data_dir>/wrenn.db`.
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    /// AES-256 key for the envd tokens at rest (the server keeps it under the data dir, 0600).
    pub envd_key: Vec<u8>,
    pub max_connections: u32,
}

impl DbConfig {
    pub fn new(
        data_dir: impl Into<PathBuf>,
        database_url: Option<String>,
        envd_key: &[u8],
    ) -> Self {
        Self {
            database_url,
            data_dir: data_dir.into(),
            envd_key: envd_key.to_vec(),
            max_connections: 16,
        }
    }
}

/// The database handle: a pool plus what every repository call needs. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    pub(super) pool: AnyPool,
    backend: Backend,
    pub(super) cipher: Arc<EnvdTokenCipher>,
    pub(super) activity: Arc<Debouncer>,
    /// Running sandboxes' rows for the I/O routes (see [`super::hot`]).
    pub(super) hot: Arc<super::hot::HotRows>,
    /// Serialises this process's SQLite write transactions (see [`Db::begin_write`]).
    sqlite_writer: Arc<Mutex<()>>,
    /// What [`Db::reopen`] needs.
    url: String,
    envd_key: Arc<Vec<u8>>,
    max_connections: u32,
}

impl Db {
    /// Opens (creating a SQLite file if needed) and migrates the database.
    pub async fn connect(config: DbConfig) -> Result<Self, DbError> {
        install_default_drivers();
        let cipher = Arc::new(EnvdTokenCipher::new(&config.envd_key)?);
        let url = config.database_url.filter(|u| !u.trim().is_empty());
        let (backend, url) = match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                (Backend::Postgres, u)
            }
            Some(u) if u.starts_with("sqlite:") => (Backend::Sqlite, u),
            Some(u) => {
                return Err(DbError::Sqlx(sqlx::Error::Configuration(
                    format!("DATABASE_URL must be postgres://... or sqlite:..., got {u:?}").into(),
                )));
            }
            None => {
                std::fs::create_dir_all(&config.data_dir).map_err(|source| DbError::DataDir {
                    path: config.data_dir.clone(),
                    source,
                })?;
                let path = config.data_dir.join("wrenn.db");
                (
                    Backend::Sqlite,
                    format!("sqlite://{}?mode=rwc", path.display()),
                )
            }
        };
        Self::open(
            backend,
            url,
            config.envd_key,
            config.max_connections.max(1),
            cipher,
        )
        .await
    }

    /// A second, independent handle on the same database (as after a restart); runs the
    /// migrations again, which must be a no-op.
    pub async fn reopen(&self) -> Result<Self, DbError> {
        self.reopen_with_key(&self.envd_key.clone()).await
    }

    /// Like [`Db::reopen`] with another envd-token key (key rotation tooling, tests).
    pub async fn reopen_with_key(&self, envd_key: &[u8]) -> Result<Self, DbError> {
        let cipher = Arc::new(EnvdTokenCipher::new(envd_key)?);
        Self::open(
            self.backend,
            self.url.clone(),
            envd_key.to_vec(),
            self.max_connections,
            cipher,
        )
        .await
    }

    async fn open(
        backend: Backend,
        url: String,
        envd_key: Vec<u8>,
        max_connections: u32,
        cipher: Arc<EnvdTokenCipher>,
    ) -> Result<Self, DbError> {
        let mut options = AnyPoolOptions::new().max_connections(max_connections);
        if backend == Backend::Sqlite {
            // The Any driver only takes a URL, so the per-connection pragmas are set here.
            // WAL lets readers run beside the single writer; the busy timeout makes writers
            // queue instead of failing; SQLite enforces foreign keys only when asked.
            let pragmas = format!(
                "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                 PRAGMA synchronous = NORMAL;",
                SQLITE_BUSY_TIMEOUT.as_millis()
            );
            options = options.after_connect(move |conn, _meta| {
                let pragmas = pragmas.clone();
                Box::pin(async move {
                    conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(pragmas)))
                        .await
                        .map(|_| ())
                })
            });
        }
        let pool = options.connect(&url).await?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await?;
        tracing::info!(?backend, "database ready");
        Ok(Self {
            pool,
            backend,
            cipher,
            activity: Arc::new(Debouncer::new(super::debounce::ACTIVITY_INTERVAL)),
            hot: Arc::default(),
            sqlite_writer: Arc::new(Mutex::new(())),
            url,
            envd_key: Arc::new(envd_key),
            max_connections,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A transaction that takes the write lock up front.
    ///
    /// SQLite has one writer at a time. Its default deferred `BEGIN` fails at once with
    /// SQLITE_BUSY when a transaction that has read tries to write after another writer
    /// committed, and its busy handler polls with sleeps of up to 100 ms, so many concurrent
    /// writers spend most of their time asleep. Writers in this process therefore queue on an
    /// async mutex first, then `BEGIN IMMEDIATE` (which still honours the busy timeout against
    /// other processes). PostgreSQL needs neither: plain `BEGIN`, row locks do the rest.
    pub(super) async fn begin_write(&self) -> Result<WriteTx, DbError> {
        Ok(match self.backend {
            Backend::Sqlite => {
                let guard = self.sqlite_writer.clone().lock_owned().await;
                WriteTx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _guard: Some(guard),
                }
            }
            Backend::Postgres => WriteTx {
                tx: self.pool.begin().await?,
                _guard: None,
            },
        })
    }
}

/// A write transaction (see [`Db::begin_write`]); dereferences to the connection, so queries
/// run on `&mut *tx`. Dropping it without [`WriteTx::commit`] rolls back.
pub(super) struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), DbError> {
        Ok(self.tx.commit().await?)
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}
