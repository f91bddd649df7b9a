//! Versioned migrations of the PostgreSQL schema: `engine/migrations/V<n>__<name>.sql`,
//! embedded at build time (refinery), recorded in `hookd_schema_history`.
//!
//! Every node runs them at start (and `hookd migrate` alone) under one advisory lock, so nodes
//! starting together apply each migration once. A database migrated by a newer hookd is
//! refused before anything is written: this binary does not know what that schema means.

use tracing::info;

use super::{Failure, PgResult};
use crate::store::{Result, StoreError};

mod embedded {
    refinery::embed_migrations!("migrations");
}

const HISTORY_TABLE: &str = "hookd_schema_history";
/// Key of the advisory lock held while migrating (any fixed number unique to hookd).
const MIGRATION_LOCK: i64 = 0x686f_6f6b_6400_0001;

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: i32 = 6;

/// Applies pending migrations. Returns the versions applied now (empty: the schema was
/// current).
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<i32>> {
    migrate_locked(client).await.map_err(StoreError::from)
}

async fn migrate_locked(client: &mut tokio_postgres::Client) -> PgResult<Vec<i32>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = run(client).await;
    // Also released when the connection closes, so an error path cannot leave it held.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result
}

async fn run(client: &mut tokio_postgres::Client) -> PgResult<Vec<i32>> {
    let known = embedded::migrations::runner().get_migrations().len() as i32;
    debug_assert_eq!(
        known, SCHEMA_VERSION,
        "SCHEMA_VERSION names the last migration"
    );
    if let Some(applied) = applied_version(client).await?
        && applied > SCHEMA_VERSION
    {
        return Err(Failure::Store(StoreError::Unavailable(format!(
            "the database schema is at version {applied}, newer than this hookd knows (up to \
             {SCHEMA_VERSION}): a newer hookd migrated it. Run that version (or newer) on every \
             node; this one will not write to a schema it does not know"
        ))));
    }
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    let report = runner
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run_async(client)
        .await
        .map_err(|err| {
            Failure::Store(StoreError::Unavailable(format!(
                "the schema migration failed: {}",
                super::with_causes(&err)
            )))
        })?;
    let applied: Vec<i32> = report
        .applied_migrations()
        .iter()
        .map(|m| m.version())
        .collect();
    for migration in report.applied_migrations() {
        info!(
            version = migration.version(),
            name = migration.name(),
            "database schema migrated"
        );
    }
    Ok(applied)
}

/// The newest version recorded in the history table, if it exists.
async fn applied_version(client: &tokio_postgres::Client) -> PgResult<Option<i32>> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("public.{HISTORY_TABLE}")],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one(&format!("SELECT max(version) FROM {HISTORY_TABLE}"), &[])
        .await?;
    Ok(row.get(0))
}
