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
