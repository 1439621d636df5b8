-- The reference tile: PostGIS's own ST_AsMVT(ST_AsMVTGeom(...)) of a countries table as
-- natural_earth::load_countries makes it, extent 4096, buffer 64, layer "countries", id gid.
-- The table name is put in by the caller; $1, $2, $3 are z, x, y.
select ST_AsMVT(q, 'countries', 4096, 'geom', 'gid') from (
  select gid, iso, name,
         ST_AsMVTGeom(ST_Transform(geom, 3857), ST_TileEnvelope($1, $2, $3), 4096, 64, true) as geom
  from {table}
  where geom && (
    -- The buffered tile, clamped to the Web Mercator square before the transform: beyond 180°
    -- PROJ would wrap it to the other hemisphere.
    select ST_Transform(ST_MakeEnvelope(
             greatest(ST_XMin(e), -20037508.342789244), greatest(ST_YMin(e), -20037508.342789244),
             least(ST_XMax(e), 20037508.342789244), least(ST_YMax(e), 20037508.342789244), 3857), 4326)
    from ST_TileEnvelope($1, $2, $3, margin => 64.0 / 4096) as e)
) q where geom is not null
