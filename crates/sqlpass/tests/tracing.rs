//! A query's span and events: what ran (its format, access and size, the rows streamed), never
//! its text — neither sqlpass's logs nor, on the registry's pools, sqlx's statement logs.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use std::sync::{Arc, Mutex};

use common::{env, text};
use sqlpass::Options;

/// Log lines written to memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_query_runs_in_a_span_that_never_carries_its_text() {
    let env = env().await;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let sql = "select 'sekrit-value' as s from places";
    let registry =
        sqlpass::PoolRegistry::new(env.db.connect_options(), sqlpass::RegistryConfig::default());
    let pool = registry.pool(env.role.name(), env.role.password()).unwrap();
    let doc = text(&pool, sql, Options::default()).await;
    assert!(doc.contains("sekrit-value"));
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let streamed = logs
        .lines()
        .find(|l| l.contains("query streamed"))
        .unwrap_or_else(|| panic!("no query event in {logs}"));
    assert!(
        streamed.contains(&format!(
            "sql{{format=Json access=ReadOnly text_bytes={}}}",
            sql.len()
        )),
        "{streamed}"
    );
    assert!(streamed.contains("rows=3 failed=false"), "{streamed}");
    assert!(!logs.contains("sekrit"), "{logs}");
}
