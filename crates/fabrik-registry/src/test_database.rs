//! Under test, `FABRIK_TEST_POSTGRES_URL` (a server's maintenance database, e.g.
//! `postgres://fabrik@127.0.0.1:5432/postgres`) gives every test's registry file a database of
//! its own on that server, so the whole suite runs on PostgreSQL as well as on SQLite.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::Location;

/// The variable naming the server.
const SERVER: &str = "FABRIK_TEST_POSTGRES_URL";

/// Whether the suite runs on PostgreSQL.
pub(crate) fn on_postgres() -> bool {
    std::env::var_os(SERVER).is_some()
}

/// Where a test's registry file `path` lives: the file itself, or its own database.
pub(crate) async fn location(path: &Path) -> Location {
    let Ok(server) = std::env::var(SERVER) else {
        return Location::File(path.to_owned());
    };
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    let name: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("registry_test_{name}");
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await
        .expect("the test PostgreSQL server answers");
    // The same file opened again (a restart) finds its database.
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
    Location::Postgres {
        url: format!("{base}/{name}"),
        audit_key: path.with_file_name("audit.key"),
    }
}
