//! Test support: run one test body against SQLite and against PostgreSQL.
//!
//! [`db_test!`](crate::db_test) turns `async fn name(db) { ... }` into `name::sqlite` and
//! `name::postgres`, so both backends always run the same bodies and the same number of tests.
//! Each run gets its own database (a temp dir for SQLite; `CREATE DATABASE wt_<random>` on the
//! cluster at `WRENN_TEST_PG_URL` for PostgreSQL) and removes it afterwards, also when the body
//! panics, so tests run in parallel. Without `WRENN_TEST_PG_URL` the PostgreSQL half fails: it
//! never skips.

use std::future::Future;
use std::path::PathBuf;

use sqlx::any::AnyPoolOptions;

use super::crypto::EnvdTokenCipher;
use super::{Db, DbConfig, ids};

pub const PG_URL_VAR: &str = "WRENN_TEST_PG_URL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

/// One throwaway database; [`TestDatabase::cleanup`] removes it.
pub struct TestDatabase {
    pub config: DbConfig,
    sqlite_dir: Option<PathBuf>,
    pg: Option<(String, String)>, // (admin URL, database name)
}

impl TestDatabase {
    pub async fn create(backend: TestBackend) -> Self {
        let key = EnvdTokenCipher::generate_key();
        match backend {
            TestBackend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("wrenn-cp-test-{}", ids::sandbox_id()));
                Self {
                    config: DbConfig::new(&dir, None, &key),
                    sqlite_dir: Some(dir),
                    pg: None,
                }
            }
            TestBackend::Postgres => {
                let admin = std::env::var(PG_URL_VAR).unwrap_or_else(|_| {
                    panic!(
                        "{PG_URL_VAR} is not set: the PostgreSQL half of the database tests needs \
                         a cluster. Run scripts/test (it starts a throwaway one), or start one \
                         with `source scripts/lib.sh; start_test_postgres`."
                    )
                });
                Self::create_postgres(&admin).await
            }
        }
    }

    /// A fresh PostgreSQL database on the cluster of `admin` (a URL whose database the
    /// tests may `CREATE DATABASE` from).
    pub async fn create_postgres(admin: &str) -> Self {
        let key = EnvdTokenCipher::generate_key();
        let name = format!("wt_{}", ids::sandbox_id());
        let pool = admin_pool(admin).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin}: {e}"));
        pool.close().await;
        let url = with_database(admin, &name);
        Self {
            config: DbConfig::new(std::env::temp_dir(), Some(url), &key),
            sqlite_dir: None,
            pg: Some((admin.to_owned(), name)),
        }
    }

    pub async fn connect(&self) -> Db {
        let config = DbConfig {
            database_url: self.config.database_url.clone(),
            data_dir: self.config.data_dir.clone(),
            envd_key: self.config.envd_key.clone(),
            max_connections: self.config.max_connections,
        };
        Db::connect(config).await.expect("connect test database")
    }

    pub async fn cleanup(self) {
        if let Some(dir) = &self.sqlite_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some((admin, name)) = &self.pg {
            let pool = admin_pool(admin).await;
            // FORCE ends connections a panicking body may have left open.
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&pool)
            .await
            {
                eprintln!("warning: could not drop test database {name}: {e}");
            }
            pool.close().await;
        }
    }
}

/// A plain 256 MiB sandbox row of `team_id` on `host_id` (no deadline, metadata or token);
/// tests change what they need with `NewSandbox { field, ..new_sandbox(..) }`.
pub fn new_sandbox<'a>(team_id: &'a str, host_id: Option<&'a str>) -> super::NewSandbox<'a> {
    super::NewSandbox {
        team_id,
        host_id,
        template: "base",
        vcpus: 1,
        memory_mb: 256,
        disk_size_mb: 5120,
        timeout_sec: 0,
        end_at: None,
        on_timeout: super::OnTimeout::Kill,
        metadata: Default::default(),
        envd_token: None,
        auto_resume: false,
        idempotency_key: None,
    }
}

/// `SELECT COUNT(*)` of a table (tests only; `table` is a name the test wrote).
pub async fn count_rows(db: &Db, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(db.pool())
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
}

async fn admin_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {PG_URL_VAR}={url}: {e}"))
}

/// The same server URL with another database name (the last path segment).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let server = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// Runs `body` against a fresh database of `backend`, then removes the database, re-raising a
/// panic of the body afterwards.
pub async fn run<F, Fut>(backend: TestBackend, body: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tdb = TestDatabase::create(backend).await;
    let db = match Db::connect(DbConfig {
        database_url: tdb.config.database_url.clone(),
        data_dir: tdb.config.data_dir.clone(),
        envd_key: tdb.config.envd_key.clone(),
        max_connections: tdb.config.max_connections,
    })
    .await
    {
        Ok(db) => db,
        Err(e) => {
            tdb.cleanup().await;
            panic!("connect test database ({backend:?}): {e}");
        }
    };
    // Spawned so that a panic in the body comes back as a value and cleanup still runs.
    let result = tokio::spawn(body(db.clone())).await;
    db.close().await;
    tdb.cleanup().await;
    if let Err(e) = result {
        match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(e) => panic!("test body did not finish: {e}"),
        }
    }
}

/// Defines `mod $name { fn sqlite(); fn postgres(); }` running the same body on both backends.
#[macro_export]
macro_rules! db_test {
    ($(#[$meta:meta])* async fn $name:ident($db:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($db: $crate::db::Db) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                $crate::db::testing::run($crate::db::testing::TestBackend::Sqlite, body).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                $crate::db::testing::run($crate::db::testing::TestBackend::Postgres, body).await;
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn swaps_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5433/postgres", "wt_x"),
            "postgres://postgres@127.0.0.1:5433/wt_x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/db?sslmode=disable", "wt_x"),
            "postgres://u:p@h:1/wt_x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:1", "wt_x"),
            "postgres://h:1/wt_x"
        );
    }
}
