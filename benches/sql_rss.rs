//! Peak memory of a sqlpass stream: 1 M and 10 M generated rows (an int8, a float8, a text and
//! a point) as JSON, each run in a fresh process, reporting its peak resident set (`VmHWM`)
//! next to a process that only connects. Runs under `cargo bench --bench sql_rss`; a test
//! runner listing the benchmarks sees none.
#![expect(
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    reason = "a benchmark reports on stdout and stops, saying why, when its setup fails"
)]

#[path = "support/mod.rs"]
mod support;

use futures_util::StreamExt;
use geostack::sql::{Format, Options};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--measure") {
        let rows: u64 = args[pos + 1].parse().expect("a row count");
        measure(rows);
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let exe = std::env::current_exe().expect("this executable");
    for rows in [0_u64, 1_000_000, 10_000_000] {
        let out = std::process::Command::new(&exe)
            .args(["--measure", &rows.to_string()])
            .output()
            .expect("run a measurement");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

fn measure(rows: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (bytes, seconds) = rt.block_on(async {
        let pool = support::bench_pool("select 1", "").await;
        let started = std::time::Instant::now();
        let mut bytes = 0usize;
        if rows > 0 {
            let sql = format!(
                "select g::int8 as id, (g * 0.001)::float8 as x, 'place ' || g as name,
                        ST_SetSRID(ST_MakePoint((g % 3600) * 0.1 - 180, (g % 1700) * 0.1 - 85), 4326) as geom
                 from generate_series(1, {rows}) g"
            );
            let options = Options::default()
                .format(Format::Json)
                .affected_tables(false)
                .statement_timeout(std::time::Duration::from_secs(600))
                .deadline(std::time::Duration::from_secs(900));
            let response = geostack::sql::run(&pool, &sql, options).await.expect("a run");
            let mut body = response.body;
            while let Some(chunk) = body.next().await {
                bytes += chunk.expect("a chunk").len();
            }
        }
        (bytes, started.elapsed().as_secs_f64())
    });
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(str::trim)
        .unwrap_or("unknown");
    println!("sql_rss json rows={rows} bytes={bytes} seconds={seconds:.1} peak_rss={hwm}");
}
