//! The tables a query reads, from its plan: for cache tags, and for the key's table grants.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Row as _};

use crate::{Error, Options, Result};

/// The tables `sql` (one checked statement) touches, read from its plan on `conn`.
pub(crate) async fn planned(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    statement_timeout: Duration,
) -> Result<Vec<String>> {
    let err = |e| Error::from_sqlx(e, statement_timeout);
    let explain = format!("EXPLAIN (FORMAT JSON, VERBOSE)\n{sql}");
    let row: PgRow = sqlx::query(AssertSqlSafe(explain))
        .persistent(false)
        .fetch_one(conn)
        .await
        .map_err(err)?;
    let raw = row.try_get_raw(0).map_err(err)?;
    let plan: serde_json::Value = raw
        .as_bytes()
        .ok()
        .and_then(|b| serde_json::from_slice(b).ok())
        .ok_or_else(|| Error::Internal("unreadable EXPLAIN output".into()))?;
    Ok(from_plan(&plan))
}

/// Refuses `tables` when `options` list the key's tables and one is not among them.
pub(crate) fn check_granted(options: &Options, tables: &[String]) -> Result<()> {
    match &options.allowed_tables {
        Some(allowed) => match tables.iter().find(|t| !allowed.contains(t)) {
            Some(table) => Err(Error::Query {
                code: "42501".into(),
                message: format!("permission denied for table {table}: the key does not grant it"),
            }),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// `schema.table` of every relation in an `EXPLAIN (FORMAT JSON, VERBOSE)` plan, sorted.
pub(crate) fn from_plan(plan: &serde_json::Value) -> Vec<String> {
    let mut tables = BTreeSet::new();
    collect(plan, &mut tables);
    tables.into_iter().collect()
}

fn collect(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let (Some(rel), Some(schema)) = (
                map.get("Relation Name").and_then(|r| r.as_str()),
                map.get("Schema").and_then(|s| s.as_str()),
            ) {
                out.insert(format!("{schema}.{rel}"));
            }
            map.values().for_each(|v| collect(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        _ => {}
    }
}

/// CARTO's `X-Cache-Channel`: `<database>:<schema.table>,<schema.table>`.
pub(crate) fn cache_channel(database: &str, tables: &[String]) -> Option<String> {
    (!tables.is_empty()).then(|| format!("{database}:{}", tables.join(",")))
}

/// `Surrogate-Key` values: `t:` and a 64-bit FNV-1a hash of `<database>:<schema.table>` in
/// base 36, one per table (stable, short, safe in a header).
pub(crate) fn surrogate_keys(database: &str, tables: &[String]) -> Vec<String> {
    tables
        .iter()
        .map(|t| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in database.bytes().chain([b':']).chain(t.bytes()) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            let mut digits = Vec::new();
            while h > 0 {
                let d = (h % 36) as u8;
                digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
                h /= 36;
            }
            digits.reverse();
            format!("t:{}", String::from_utf8_lossy(&digits))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_are_found_anywhere_in_the_plan() {
        let plan = serde_json::json!([{"Plan": {
            "Node Type": "Hash Join",
            "Plans": [
                {"Node Type": "Seq Scan", "Relation Name": "places", "Schema": "public"},
                {"Node Type": "Hash", "Plans": [
                    {"Node Type": "Index Scan", "Relation Name": "roads", "Schema": "osm"},
                    {"Node Type": "Seq Scan", "Relation Name": "places", "Schema": "public"}
                ]}
            ]
        }}]);
        let tables = from_plan(&plan);
        assert_eq!(tables, ["osm.roads", "public.places"]);
        assert_eq!(
            cache_channel("db", &tables).unwrap(),
            "db:osm.roads,public.places"
        );
        assert_eq!(cache_channel("db", &[]), None);
        let keys = surrogate_keys("db", &tables);
        assert_eq!(keys.len(), 2);
        assert_ne!(keys[0], keys[1]);
        assert_eq!(keys, surrogate_keys("db", &tables), "stable");
        assert!(keys.iter().all(|k| k.starts_with("t:") && k.len() > 2));
    }
}
