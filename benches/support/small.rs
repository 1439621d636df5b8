//! The point-lookup table of the small-query benchmarks (`sql_small`, `sql_http`): 100 000
//! deterministic rows of the column types small queries read, with a primary key.

/// Counts the table's rows (0 when it is to be made).
pub(crate) const CHECK: &str = "select count(*) from bench_small";

/// Makes and analyzes the table.
pub(crate) const SETUP: &str = "
create table bench_small as
select g::int8 as id, (g % 17)::int4 as cat, (g * 0.25)::float8 as val, 'label ' || g as label,
       timestamptz '2026-01-01' + g * interval '1 minute' as ts,
       ST_SetSRID(ST_MakePoint((g % 3600) * 0.1 - 180, (g % 1700) * 0.1 - 85), 4326) as geom
from generate_series(1, 100000) g;
alter table bench_small add primary key (id);
analyze bench_small;
";

/// pgbench's rate (transactions/s) running `script` in query `mode` (`prepared`, `simple`) with
/// `clients` connections for `secs` seconds on `database`, logged in as `options` says. A script
/// PostgreSQL refused fails the benchmark rather than measuring nothing.
pub(crate) fn pgbench(
    options: &sqlx::postgres::PgConnectOptions,
    database: &str,
    mode: &str,
    script: &str,
    clients: usize,
    secs: u64,
) -> f64 {
    let path = std::env::temp_dir().join(format!(
        "geostack-pgbench-{}-{mode}.sql",
        std::process::id()
    ));
    std::fs::write(&path, script).expect("the pgbench script");
    let out = std::process::Command::new("pgbench")
        .args(["-n", "-M", mode, "-j", "2"])
        .args(["-c", &clients.to_string(), "-T", &secs.to_string()])
        .args(["-h", options.get_host()])
        .args(["-p", &options.get_port().to_string()])
        .args(["-U", options.get_username()])
        .arg("-f")
        .arg(&path)
        .arg(database)
        .output()
        .unwrap_or_else(|e| panic!("pgbench could not run ({e}): run scripts/services"));
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !errors.contains("ERROR"),
        "pgbench failed ({mode}): {text}{errors}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench's output: {text}{errors}"))
}
