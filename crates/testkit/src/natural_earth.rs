//! Natural Earth countries at 1:110m (and 1:50m, ten times the vertices), vendored in
//! `data/natural-earth`, decoded from TopoJSON.

use geo_types::{Coord, LineString, MultiPolygon, Polygon};
use serde_json::Value;
use sqlx::PgPool;

const COUNTRIES_110M: &str = include_str!("../../../data/natural-earth/countries-110m.json");
const COUNTRIES_50M: &str = include_str!("../../../data/natural-earth/countries-50m.json");
const PLACES_110M: &str = include_str!("../../../data/natural-earth/populated-places-110m.csv");

/// A populated place of the 1:110m set.
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    /// Its name.
    pub name: String,
    /// Its country's name.
    pub adm0name: String,
    /// Its country's ISO 3166-1 alpha-2 code (`-99` where Natural Earth has none).
    pub iso_a2: String,
    /// Natural Earth's class (`Admin-0 capital`, `Populated place`, …).
    pub featurecla: String,
    /// The largest population estimate.
    pub pop_max: i64,
    /// EPSG:4326 degrees.
    pub lon: f64,
    /// EPSG:4326 degrees.
    pub lat: f64,
}

/// The 243 populated places, in file order.
///
/// # Panics
///
/// When the vendored file is damaged.
pub fn places() -> Vec<Place> {
    PLACES_110M
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f = csv_fields(line);
            fn bad<T>(line: &str) -> T {
                panic!("data/natural-earth/populated-places-110m.csv: bad line {line:?}")
            }
            if f.len() != 7 {
                bad::<()>(line);
            }
            Place {
                name: f[0].clone(),
                adm0name: f[1].clone(),
                iso_a2: f[2].clone(),
                featurecla: f[3].clone(),
                pop_max: f[4].parse().unwrap_or_else(|_| bad(line)),
                lon: f[5].parse().unwrap_or_else(|_| bad(line)),
                lat: f[6].parse().unwrap_or_else(|_| bad(line)),
            }
        })
        .collect()
}

/// The fields of one RFC 4180 line (quoted fields may hold commas and doubled quotes).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Creates `table (gid int primary key, name text, adm0name text, iso_a2 text, featurecla text,
/// pop_max int8, geom geometry(Point, 4326))` with a GiST index and loads the places, `gid`
/// numbering them from 1 in file order.
///
/// # Panics
///
/// When PostgreSQL refuses.
pub async fn load_places(pool: &PgPool, table: &str) {
    let create = format!(
        "create table {table} (gid int primary key, name text, adm0name text, iso_a2 text,
                               featurecla text, pop_max int8, geom geometry(Point, 4326));
         create index on {table} using gist (geom);"
    );
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(pool)
        .await
    {
        panic!("testkit: cannot create {table}: {e}");
    }
    let places = places();
    let insert = format!(
        "insert into {table}
         select gid, name, adm0name, iso_a2, featurecla, pop_max, ST_SetSRID(ST_MakePoint(lon, lat), 4326)
         from unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[],
                     $7::float8[], $8::float8[])
              as p(gid, name, adm0name, iso_a2, featurecla, pop_max, lon, lat)"
    );
    let column = |f: fn(&Place) -> &str| places.iter().map(f).collect::<Vec<_>>();
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind((1..=places.len() as i32).collect::<Vec<_>>())
        .bind(column(|p| &p.name))
        .bind(column(|p| &p.adm0name))
        .bind(column(|p| &p.iso_a2))
        .bind(column(|p| &p.featurecla))
        .bind(places.iter().map(|p| p.pop_max).collect::<Vec<_>>())
        .bind(places.iter().map(|p| p.lon).collect::<Vec<_>>())
        .bind(places.iter().map(|p| p.lat).collect::<Vec<_>>())
        .execute(pool)
        .await
    {
        panic!("testkit: cannot load the places into {table}: {e}");
    }
    let analyze = format!("analyze {table}");
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(analyze))
        .execute(pool)
        .await;
}

/// A country: its ISO 3166 numeric code as Natural Earth gives it (some have none), its name,
/// and its outline in EPSG:4326 degrees.
#[derive(Clone, Debug, PartialEq)]
pub struct Country {
    /// ISO 3166-1 numeric, as text ("242"), or empty.
    pub iso: String,
    /// The name.
    pub name: String,
    /// The outline.
    pub geometry: MultiPolygon<f64>,
}

/// The 177 countries at 1:110m.
///
/// # Panics
///
/// When the vendored file is damaged.
pub fn countries() -> Vec<Country> {
    decode_countries(COUNTRIES_110M, "countries-110m.json")
}

/// The 241 countries and territories at 1:50m: about ten times the vertices of [`countries`],
/// a set whose tiles are mostly geometry work.
///
/// # Panics
///
/// When the vendored file is damaged.
pub fn countries_50m() -> Vec<Country> {
    decode_countries(COUNTRIES_50M, "countries-50m.json")
}

fn decode_countries(text: &str, file: &str) -> Vec<Country> {
    let topo: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => panic!("data/natural-earth/{file} is not JSON: {e}"),
    };
    let arcs = decode_arcs(&topo);
    let mut out = Vec::new();
    for g in topo["objects"]["countries"]["geometries"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let polygons: Vec<&Value> = match g["type"].as_str() {
            Some("Polygon") => vec![&g["arcs"]],
            Some("MultiPolygon") => g["arcs"].as_array().into_iter().flatten().collect(),
            _ => continue,
        };
        let polygons = polygons
            .into_iter()
            .map(|rings| {
                let mut rings = rings
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|ring| ring_of(ring, &arcs));
                let exterior = rings.next().unwrap_or_else(|| LineString::new(vec![]));
                Polygon::new(exterior, rings.collect())
            })
            .collect();
        out.push(Country {
            iso: g["id"].as_str().unwrap_or_default().to_owned(),
            name: g["properties"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            geometry: MultiPolygon::new(polygons),
        });
    }
    out
}

/// The arcs, de-quantized: cumulative deltas, then scaled and translated.
fn decode_arcs(topo: &Value) -> Vec<Vec<Coord<f64>>> {
    let t = &topo["transform"];
    let num = |v: &Value| v.as_f64().unwrap_or(0.0);
    let (sx, sy, tx, ty) = (
        num(&t["scale"][0]),
        num(&t["scale"][1]),
        num(&t["translate"][0]),
        num(&t["translate"][1]),
    );
    topo["arcs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|arc| {
            let (mut x, mut y) = (0.0, 0.0);
            arc.as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    x += num(&p[0]);
                    y += num(&p[1]);
                    Coord {
                        x: x * sx + tx,
                        y: y * sy + ty,
                    }
                })
                .collect()
        })
        .collect()
}

/// A ring from arc indices (`~i` for arc `i` reversed); consecutive arcs share an end point.
fn ring_of(indices: &Value, arcs: &[Vec<Coord<f64>>]) -> LineString<f64> {
    let mut coords: Vec<Coord<f64>> = Vec::new();
    for index in indices.as_array().into_iter().flatten() {
        let i = index.as_i64().unwrap_or(0);
        let (arc, reversed) = if i >= 0 {
            (i as usize, false)
        } else {
            (!i as usize, true)
        };
        let Some(points) = arcs.get(arc) else {
            continue;
        };
        let mut points = points.clone();
        if reversed {
            points.reverse();
        }
        let skip = usize::from(!coords.is_empty());
        coords.extend(points.into_iter().skip(skip));
    }
    unwrap_antimeridian(&mut coords);
    LineString::new(coords)
}

/// The TopoJSON is spherical: a ring that crosses the antimeridian jumps from +180 to -180 and
/// back. Such a ring is shifted by ±360 after each jump, so that it is continuous; the loader
/// splits it again at 180°. A ring that crosses only once encircles a pole (Antarctica): in the
/// plane its jump is the edge along the bottom of the map, and it stays as it is.
fn unwrap_antimeridian(coords: &mut [Coord<f64>]) {
    let mut offset = 0.0;
    let mut shifted = coords.to_vec();
    for i in 1..coords.len() {
        let dx = coords[i].x - coords[i - 1].x;
        if dx > 180.0 {
            offset -= 360.0;
        } else if dx < -180.0 {
            offset += 360.0;
        }
        shifted[i].x += offset;
    }
    if offset == 0.0 {
        coords.copy_from_slice(&shifted);
    }
}

/// Creates `table (gid int primary key, iso text, name text, geom geometry(MultiPolygon, 4326))`
/// with a GiST index and loads the countries, `gid` numbering them from 1 in file order, every
/// geometry valid in the plane.
///
/// # Panics
///
/// When PostgreSQL refuses.
pub async fn load_countries(pool: &PgPool, table: &str) {
    load(pool, table, true, countries()).await;
}

/// As [`load_countries`], with the 1:50m countries of [`countries_50m`].
///
/// # Panics
///
/// When PostgreSQL refuses.
pub async fn load_countries_50m(pool: &PgPool, table: &str) {
    load(pool, table, true, countries_50m()).await;
}

/// As [`load_countries`], but the rings as the file draws them (only split at 180°): a few
/// countries stay invalid in the plane (self-touching and crossing rings), the input a tile
/// pipeline must repair.
///
/// # Panics
///
/// When PostgreSQL refuses.
pub async fn load_countries_unrepaired(pool: &PgPool, table: &str) {
    load(pool, table, false, countries()).await;
}

async fn load(pool: &PgPool, table: &str, repair: bool, countries: Vec<Country>) {
    let create = format!(
        "create table {table} (gid int primary key, iso text, name text, geom geometry(MultiPolygon, 4326));
         create index on {table} using gist (geom);"
    );
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(pool)
        .await
    {
        panic!("testkit: cannot create {table}: {e}");
    }
    // Rings unwrapped across the antimeridian are split back at 180° (ST_WrapX); what is still
    // invalid in the plane (a few rings of the 1:110m data) is repaired, keeping polygons.
    let insert = format!(
        "insert into {table}
         select gid, iso, name,
                case when ST_IsValid(g) or not $5 then g
                     else ST_Multi(ST_CollectionExtract(ST_MakeValid(g), 3)) end
         from (select gid, iso, name,
                      ST_Multi(ST_CollectionExtract(
                          ST_WrapX(ST_WrapX(ST_GeomFromText(wkt, 4326), 180, -360), -180, 360), 3)) as g
               from unnest($1::int[], $2::text[], $3::text[], $4::text[]) as c(gid, iso, name, wkt)) s"
    );
    let gids: Vec<i32> = (1..=countries.len() as i32).collect();
    let isos: Vec<&str> = countries.iter().map(|c| c.iso.as_str()).collect();
    let names: Vec<&str> = countries.iter().map(|c| c.name.as_str()).collect();
    let wkts: Vec<String> = countries.iter().map(|c| wkt(&c.geometry)).collect();
    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind(gids)
        .bind(isos)
        .bind(names)
        .bind(wkts)
        .bind(repair)
        .execute(pool)
        .await
    {
        panic!("testkit: cannot load the countries into {table}: {e}");
    }
    let analyze = format!("analyze {table}");
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(analyze))
        .execute(pool)
        .await;
}

/// PostGIS's own tile `z/x/y` of a table loaded by [`load_countries`]:
/// `ST_AsMVT(ST_AsMVTGeom(…))` with extent 4096 and buffer 64, layer `countries`, ids from `gid`,
/// attributes `iso` and `name` — the reference the tiles crate is compared with.
///
/// # Panics
///
/// When PostgreSQL refuses.
pub async fn st_asmvt_tile(pool: &PgPool, table: &str, z: u8, x: u32, y: u32) -> Vec<u8> {
    let sql = include_str!("sql/st_asmvt_countries.sql").replace("{table}", table);
    let to_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    match sqlx::query_as::<_, (Vec<u8>,)>(sqlx::AssertSqlSafe(sql))
        .bind(i32::from(z))
        .bind(to_i32(x))
        .bind(to_i32(y))
        .fetch_one(pool)
        .await
    {
        Ok((tile,)) => tile,
        Err(e) => panic!("testkit: ST_AsMVT of {table} {z}/{x}/{y} failed: {e}"),
    }
}

fn wkt(mp: &MultiPolygon<f64>) -> String {
    let ring = |r: &LineString<f64>| {
        let pts: Vec<String> = r.0.iter().map(|c| format!("{} {}", c.x, c.y)).collect();
        format!("({})", pts.join(","))
    };
    let polygons: Vec<String> =
        mp.0.iter()
            .map(|p| {
                let mut rings = vec![ring(p.exterior())];
                rings.extend(p.interiors().iter().map(ring));
                format!("({})", rings.join(","))
            })
            .collect();
    format!("MULTIPOLYGON({})", polygons.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_loaded_country_is_valid_in_the_plane() {
        let db = crate::TestDb::new().await;
        load_countries(db.pool(), "countries").await;
        let (total, valid, polygons): (i64, i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where ST_IsValid(geom)),
                    count(*) filter (where GeometryType(geom) = 'MULTIPOLYGON') from countries",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!((total, valid, polygons), (177, 177, 177));
        // Russia, once split at 180°, reaches both edges of the map; its area is no longer
        // cancelled by self-intersections.
        let (xmin, xmax, area): (f64, f64, f64) = sqlx::query_as(
            "select ST_XMin(geom), ST_XMax(geom), ST_Area(geom) from countries where name = 'Russia'",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!((xmin, xmax), (-180.0, 180.0));
        assert!(area > 2900.0, "{area}");

        load_countries_unrepaired(db.pool(), "drawn").await;
        let invalid: Vec<String> =
            sqlx::query_scalar("select name from drawn where not ST_IsValid(geom) order by name")
                .fetch_all(db.pool())
                .await
                .unwrap();
        assert!(
            !invalid.is_empty(),
            "the unrepaired countries are all valid"
        );
        eprintln!("invalid as drawn: {invalid:?}");
    }

    #[test]
    fn the_places_parse_with_their_quoted_names() {
        let all = places();
        assert_eq!(all.len(), 243);
        let dc = all.iter().find(|p| p.name == "Washington, D.C.").unwrap();
        assert_eq!((dc.iso_a2.as_str(), dc.pop_max), ("US", 4_338_000));
        let tokyo = all.iter().max_by_key(|p| p.pop_max).unwrap();
        assert_eq!(
            (tokyo.name.as_str(), tokyo.lon, tokyo.lat),
            ("Tokyo", 139.749462, 35.686963)
        );
        assert!(
            all.iter()
                .all(|p| (-180.0..=180.0).contains(&p.lon) && (-90.0..=90.0).contains(&p.lat))
        );
        assert_eq!(csv_fields(r#"a,"b, ""c""",d"#), vec!["a", r#"b, "c""#, "d"]);
    }

    #[tokio::test]
    async fn the_places_load_as_points() {
        let db = crate::TestDb::new().await;
        load_places(db.pool(), "places").await;
        let (n, name): (i64, String) = sqlx::query_as(
            "select count(*), (array_agg(name order by ST_Distance(geom, ST_SetSRID(ST_MakePoint(2.35, 48.85), 4326))))[1] from places",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!((n, name.as_str()), (243, "Paris"));
    }

    #[test]
    fn the_countries_decode_into_closed_rings() {
        let all = countries();
        assert_eq!(all.len(), 177);
        let fiji = all.iter().find(|c| c.name == "Fiji").unwrap();
        // The file gives Fiji two polygons: `"arcs":[[[0]],[[1]]]`.
        assert_eq!((fiji.iso.as_str(), fiji.geometry.0.len()), ("242", 2));
        assert_closed_and_continuous(&all);
    }

    #[test]
    fn the_50m_countries_have_ten_times_the_vertices() {
        let vertices = |all: &[Country]| -> usize {
            all.iter()
                .flat_map(|c| &c.geometry.0)
                .map(|p| {
                    p.exterior().0.len() + p.interiors().iter().map(|r| r.0.len()).sum::<usize>()
                })
                .sum()
        };
        let fine = countries_50m();
        assert_eq!(fine.len(), 241);
        let ratio = vertices(&fine) as f64 / vertices(&countries()) as f64;
        assert!((8.0..12.0).contains(&ratio), "{ratio}");
        assert_closed_and_continuous(&fine);
    }

    #[tokio::test]
    async fn the_50m_countries_load_valid() {
        let db = crate::TestDb::new().await;
        load_countries_50m(db.pool(), "countries_50m").await;
        let counts: (i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where not ST_IsValid(geom)) from countries_50m",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(counts, (241, 0));
    }

    fn assert_closed_and_continuous(all: &[Country]) {
        for c in all {
            for p in &c.geometry.0 {
                let r = &p.exterior().0;
                assert!(r.len() >= 4, "{}", c.name);
                assert_eq!(r.first(), r.last(), "{} has an open ring", c.name);
                let jumps = r
                    .windows(2)
                    .filter(|w| (w[1].x - w[0].x).abs() > 180.0)
                    .count();
                assert!(
                    jumps == 0 || c.name == "Antarctica",
                    "{} jumps across the antimeridian",
                    c.name
                );
                for pt in r {
                    assert!(
                        (-360.0..=360.0).contains(&pt.x) && (-90.0..=90.0).contains(&pt.y),
                        "{}",
                        c.name
                    );
                }
            }
        }
    }
}
