//! Under test, `FABRIK_TEST_POSTGRES_URL` (a server's maintenance database) gives every test's
//! alert file a database of its own on that server, so the suite runs on PostgreSQL as well as
//! on SQLite (decision 0055).

use std::path::Path;

use crate::Store;

/// Where a test's alert file `path` lives: the file itself, or its own database.
pub(crate) async fn store(path: &Path) -> Store {
    let Ok(server) = std::env::var("FABRIK_TEST_POSTGRES_URL") else {
        return Store::File(path.to_owned());
    };
    // A name of the path's own: the same file opened again (a restart) finds its database.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    let name = format!("alerts_test_{hash:016x}");
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await
        .expect("the test PostgreSQL server answers");
    match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
        Err(e) => panic!("CREATE DATABASE {name}: {e}"),
    }
    pool.close().await;
    let (base, _) = server.rsplit_once('/').expect("a URL with a database");
    Store::Postgres(format!("{base}/{name}"))
}
