//! COPY between a caller and its tables, through real PostgreSQL: PostgreSQL's own bytes out,
//! rows in only with a writer's options and the role's grant, everything bounded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{body, env};
use futures_util::StreamExt as _;
use sqlpass::{Access, CopyStatement, Error, Options, copy_from, copy_to};

fn chunks(parts: &[&str]) -> impl futures_core::Stream<Item = Result<Bytes, std::io::Error>> {
    let parts: Vec<_> = parts
        .iter()
        .map(|p| Ok(Bytes::copy_from_slice(p.as_bytes())))
        .collect();
    futures_util::stream::iter(parts)
}

#[tokio::test]
async fn copy_out_streams_postgresql_s_own_bytes() {
    let env = env().await;
    let sql = "COPY (select id, name, geom from places order by id) TO STDOUT WITH (FORMAT csv, HEADER true)";
    let response = copy_to(
        &env.pool,
        &CopyStatement::new(sql).unwrap(),
        Options::default().filename("p"),
    )
    .await
    .unwrap();
    assert_eq!(response.meta.content_type, "text/csv; charset=utf-8");
    assert_eq!(response.meta.tables, ["public.places"]);
    assert_eq!(
        response.meta.content_disposition.as_deref(),
        Some("attachment; filename=\"p\"")
    );
    let ours = body(response).await;
    // The same COPY run directly by the database's owner.
    let mut conn = env.db.pool().acquire().await.unwrap();
    let mut direct = Vec::new();
    let mut stream = conn.copy_out_raw(sql).await.unwrap();
    while let Some(chunk) = stream.next().await {
        direct.extend_from_slice(&chunk.unwrap());
    }
    drop(stream);
    assert_eq!(ours, String::from_utf8(direct).unwrap());
    assert!(
        ours.starts_with("id,name,geom\n1,Zürich,0101000020E6100000"),
        "{ours}"
    );

    // A table the role may not read is refused before the first byte, as is one the key does
    // not grant.
    let secrets = CopyStatement::new("COPY secrets TO STDOUT").unwrap();
    let e = copy_to(&env.pool, &secrets, Options::default())
        .await
        .err()
        .unwrap();
    assert_eq!((e.status(), e.sqlstate()), (403, Some("42501")), "{e}");
    let listed = Options::default().allowed_tables(["public.secrets"]);
    let places = CopyStatement::new("COPY (select * from places) TO STDOUT").unwrap();
    let e = copy_to(&env.pool, &places, listed).await.err().unwrap();
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    // A copy in is not a copy out.
    let into = CopyStatement::new("COPY places FROM STDIN").unwrap();
    assert!(matches!(
        copy_to(&env.pool, &into, Options::default()).await,
        Err(Error::InvalidStatement(_))
    ));
}

#[tokio::test]
async fn copy_out_keeps_the_statement_timeout() {
    let env = env().await;
    let slow =
        CopyStatement::new("COPY (select count(*) from generate_series(1, 500000000)) TO STDOUT")
            .unwrap();
    let options = Options::default().statement_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let outcome = match copy_to(&env.pool, &slow, options).await {
        Err(e) => e.to_string(),
        Ok(response) => body(response).await,
    };
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(outcome.contains("statement timeout"), "{outcome}");
}

#[tokio::test]
async fn copy_in_writes_every_row_or_none() {
    let env = env().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create table notes (id serial primary key, note text not null, n int);
         grant select, insert on notes to \"{0}\"; grant usage on sequence notes_id_seq to \"{0}\"",
        env.role.name()
    )))
    .execute(env.db.pool())
    .await
    .unwrap();
    let count = async || -> i64 {
        sqlx::query_scalar("select count(*) from notes")
            .fetch_one(env.db.pool())
            .await
            .unwrap()
    };
    let copy = CopyStatement::new("COPY notes (note, n) FROM STDIN WITH (FORMAT csv)").unwrap();
    let writer = Options::default().access(Access::ReadWrite);

    // A reader's options copy nothing in.
    let e = copy_from(&env.pool, &copy, chunks(&["a,1\n"]), Options::default())
        .await
        .unwrap_err();
    assert_eq!(e.status(), 403);

    // Rows split across chunks anywhere.
    let rows = copy_from(
        &env.pool,
        &copy,
        chunks(&["one,1\ntw", "o,2\nthree", ",3\n"]),
        writer.clone(),
    )
    .await
    .unwrap();
    assert_eq!(rows, 3);
    assert_eq!(count().await, 3);

    // A bad row: nothing of the copy is written.
    let e = copy_from(&env.pool, &copy, chunks(&["four,4\n,5\n"]), writer.clone())
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("23502"), "{e}");
    assert_eq!(count().await, 3);

    // Over the byte limit: refused, nothing written.
    let big = "x,1\n".repeat(1000);
    let e = copy_from(
        &env.pool,
        &copy,
        chunks(&[&big]),
        writer.clone().byte_limit(1000),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Limit(_)), "{e}");
    assert_eq!(count().await, 3);

    // A table the role may not write, and one the key does not grant.
    let places = CopyStatement::new("COPY places (id) FROM STDIN").unwrap();
    let e = copy_from(&env.pool, &places, chunks(&["9\n"]), writer.clone())
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    let listed = writer.allowed_tables(["public.places"]);
    let e = copy_from(&env.pool, &copy, chunks(&["y,1\n"]), listed)
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42501"), "{e}");
    assert_eq!(count().await, 3);
}
