//! The PostgreSQL side of the harness: which backend the suite runs on, and a database of its
//! own for each data dir (created on first use, on the server `HOOKD_TEST_POSTGRES_URL` names).

use std::path::Path;

/// Chooses the backend of every engine the suite starts (`sled` unless set).
pub const BACKEND_ENV: &str = "HOOKD_TEST_BACKEND";
/// The server's URL (database `postgres`); `scripts/test.sh` starts one and sets it.
pub const URL_ENV: &str = "HOOKD_TEST_POSTGRES_URL";

/// Whether this run of the suite is on PostgreSQL.
pub fn enabled() -> bool {
    std::env::var(BACKEND_ENV).is_ok_and(|backend| backend == "postgres")
}

/// The server URL, or a failure that says how to get one.
pub fn server_url() -> String {
    std::env::var(URL_ENV).unwrap_or_else(|_| {
        panic!("{URL_ENV} is not set: run ./scripts/test.sh, which starts PostgreSQL 15, or start one with scripts/postgres.sh")
    })
}

/// The URL of `database` on the test server.
pub fn database_url(database: &str) -> String {
    let server = server_url();
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    format!("{base}/{database}")
}

/// A database name for `data_dir` (stable across restarts on the same dir).
pub fn database_for(data_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    format!("hookd_test_{:016x}", hasher.finish())
}

/// Creates `database` unless it exists. Runs on a thread of its own, so it can be called
/// from sync code inside a test's runtime.
pub fn create_database(database: &str) {
    let server = server_url();
    let database = database.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
                .await
                .expect("the test PostgreSQL server answers");
            tokio::spawn(connection);
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
                .await
                .unwrap()
                .is_some();
            if !exists {
                client
                    .batch_execute(&format!("CREATE DATABASE {database}"))
                    .await
                    .unwrap();
            }
        });
    })
    .join()
    .unwrap();
}

/// The `[store]` section for an engine on `data_dir`: empty on sled (the default).
pub fn store_section(data_dir: &Path) -> String {
    if !enabled() {
        return String::new();
    }
    let database = database_for(data_dir);
    create_database(&database);
    section(&database_url(&database), "10s")
}

/// A `[store]` section for PostgreSQL at `url`.
pub fn section(url: &str, lease_duration: &str) -> String {
    format!(
        "[store]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npool_size = 8\nlease_duration = \"{lease_duration}\"\npoll_interval = \"500ms\"\n"
    )
}

/// `config` (a test config's text) on PostgreSQL at `url`, whichever backend the suite runs on.
pub fn on_postgres(config: &str, url: &str, lease_duration: &str) -> String {
    let mut text = config.to_string();
    if let Some(start) = text.find("[store]\n") {
        let end = text[start + 1..]
            .find("\n[")
            .map_or(text.len(), |i| start + 2 + i);
        text.replace_range(start..end, "");
    }
    let section = section(url, lease_duration);
    match text.find("\n[") {
        Some(at) => text.insert_str(at + 1, &section),
        None => text.push_str(&section),
    }
    text
}

/// A fresh database on the test server (the suite's backend notwithstanding); its URL.
pub fn fresh_database() -> String {
    let database = format!("hookd_test_{:016x}", rand::random::<u64>());
    create_database(&database);
    database_url(&database)
}

/// Runs `sql` on the database at `url` and returns the rows (a test's look at what the
/// backend wrote).
pub async fn query(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL server answers");
    tokio::spawn(connection);
    client.query(sql, &[]).await.expect("the query runs")
}
