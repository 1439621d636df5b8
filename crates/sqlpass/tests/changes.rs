//! Table changes announced by the database: every committed write to a tracked table is heard,
//! whoever made it; a rolled-back one is not; a table made after the install is tracked too.

mod common;

use std::time::Duration;

use common::env;
use sqlpass::{Access, Options, TableChange, TableChanges};

#[expect(clippy::unwrap_used, reason = "a test helper")]
async fn heard(changes: &mut TableChanges, within: Duration) -> Option<TableChange> {
    tokio::time::timeout(within, changes.next())
        .await
        .ok()
        .map(|c| c.unwrap())
}

#[tokio::test]
async fn committed_writes_are_announced_whoever_makes_them() {
    // The environment installs sqlpass as a superuser: every table is tracked.
    let env = env().await;
    let mut changes = TableChanges::listen(&env.db.connect_options())
        .await
        .unwrap();

    // A client of its own, straight into PostgreSQL.
    sqlx::raw_sql("update places set name = name where id = 1")
        .execute(env.db.pool())
        .await
        .unwrap();
    assert_eq!(
        heard(&mut changes, Duration::from_secs(5)).await,
        Some(TableChange::Changed("public.places".into()))
    );

    // Rolled back: nothing.
    sqlx::raw_sql("begin; delete from places; rollback;")
        .execute(env.db.pool())
        .await
        .unwrap();
    assert_eq!(heard(&mut changes, Duration::from_millis(300)).await, None);

    // A table made afterwards, written by a caller's role through the sandbox.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create table later (id int); grant insert on later to \"{}\"",
        env.role.name()
    )))
    .execute(env.db.pool())
    .await
    .unwrap();
    let response = sqlpass::run(
        &env.pool,
        "insert into later values (1), (2)",
        Options::default().access(Access::ReadWrite),
    )
    .await
    .unwrap();
    assert!(common::body(response).await.contains("total_rows"));
    assert_eq!(
        heard(&mut changes, Duration::from_secs(5)).await,
        Some(TableChange::Changed("public.later".into()))
    );
}
