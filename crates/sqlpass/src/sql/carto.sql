-- CARTO's table functions, as CARTO's clients call them (unqualified, so in schema public):
-- CDB_CartodbfyTable makes a table what CARTO's APIs expect, in place. Both run as their caller
-- (SECURITY INVOKER): only a table's owner can cartodbfy it.
SET LOCAL client_min_messages = warning;

-- A geometry in web mercator, its latitudes clipped to the projection's range.
CREATE OR REPLACE FUNCTION public.cdb_transformtowebmercator(geom geometry) RETURNS geometry
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SECURITY INVOKER
SET search_path = pg_catalog, public AS $fn$
  SELECT CASE
    WHEN public.st_srid(geom) = 3857 THEN geom
    WHEN public.st_ymin(geom::public.box3d) >= -85.0511287798066
     AND public.st_ymax(geom::public.box3d) <= 85.0511287798066 THEN public.st_transform(geom, 3857)
    ELSE public.st_transform(
      public.st_intersection(geom, public.st_makeenvelope(-180, -85.0511287798066, 180,
                                                         85.0511287798066, public.st_srid(geom))),
      3857)
  END
$fn$;

-- Keeps the_geom_webmercator in step with the_geom.
CREATE OR REPLACE FUNCTION public.cdb_update_the_geom_webmercator() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog, public AS $fn$
BEGIN
  NEW.the_geom_webmercator := public.cdb_transformtowebmercator(NEW.the_geom);
  RETURN NEW;
END
$fn$;

-- Makes `reloid` a CARTO table, in place, and returns it:
--   cartodb_id   bigint, numbered from a sequence of its own, the primary key when the table
--                has none (unique otherwise);
--   the_geom     geometry in EPSG:4326: kept when there; else the table's one other geometry
--                column, renamed (as CARTO's import does); else a new empty column;
--   the_geom_webmercator  geometry in EPSG:3857, filled now and kept in step by a trigger;
--   GiST indexes on both geometries.
-- Idempotent. `destschema` is CARTO's signature; the table is the one `reloid` names.
CREATE OR REPLACE FUNCTION public.cdb_cartodbfytable(destschema text, reloid regclass)
RETURNS regclass
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, public SET client_min_messages = warning AS $fn$
DECLARE
  geoms text[];
  tbl text := reloid::text;
  short text;
BEGIN
  SELECT c.relname INTO short FROM pg_class c WHERE c.oid = reloid;
  EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tbl);

  IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = reloid AND attname = 'cartodb_id'
                 AND NOT attisdropped) THEN
    EXECUTE format('ALTER TABLE %s ADD COLUMN cartodb_id bigserial NOT NULL', tbl);
  END IF;
  IF NOT EXISTS (SELECT FROM pg_constraint WHERE conrelid = reloid AND contype = 'p') THEN
    EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (cartodb_id)', tbl);
  ELSIF NOT EXISTS (
    SELECT FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = reloid AND i.indisunique AND i.indnatts = 1 AND a.attname = 'cartodb_id') THEN
    EXECUTE format('CREATE UNIQUE INDEX ON %s (cartodb_id)', tbl);
  END IF;

  IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = reloid AND attname = 'the_geom'
                 AND NOT attisdropped) THEN
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO geoms
    FROM pg_attribute a
    WHERE a.attrelid = reloid AND a.attnum > 0 AND NOT a.attisdropped
      AND a.atttypid = 'public.geometry'::regtype AND a.attname <> 'the_geom_webmercator';
    IF cardinality(geoms) = 1 THEN
      EXECUTE format('ALTER TABLE %s RENAME COLUMN %I TO the_geom', tbl, geoms[1]);
    ELSE
      EXECUTE format('ALTER TABLE %s ADD COLUMN the_geom public.geometry(Geometry, 4326)', tbl);
    END IF;
  END IF;
  -- In EPSG:4326: a geometry of another (known) SRID is transformed, one without is assumed.
  IF EXISTS (SELECT FROM public.geometry_columns
             WHERE f_table_schema = (SELECT nspname FROM pg_namespace n JOIN pg_class c
                                     ON c.relnamespace = n.oid WHERE c.oid = reloid)
               AND f_table_name = short AND f_geometry_column = 'the_geom' AND srid <> 4326) THEN
    EXECUTE format(
      'ALTER TABLE %s ALTER COLUMN the_geom TYPE public.geometry(Geometry, 4326) USING
         CASE WHEN public.st_srid(the_geom) = 0 THEN public.st_setsrid(the_geom, 4326)
              ELSE public.st_transform(the_geom, 4326) END', tbl);
  END IF;

  IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = reloid
                 AND attname = 'the_geom_webmercator' AND NOT attisdropped) THEN
    EXECUTE format(
      'ALTER TABLE %s ADD COLUMN the_geom_webmercator public.geometry(Geometry, 3857)', tbl);
  END IF;
  EXECUTE format('DROP TRIGGER IF EXISTS cdb_update_the_geom_webmercator ON %s', tbl);
  EXECUTE format(
    'UPDATE %s SET the_geom_webmercator = public.cdb_transformtowebmercator(the_geom)', tbl);
  EXECUTE format(
    'CREATE TRIGGER cdb_update_the_geom_webmercator BEFORE INSERT OR UPDATE OF the_geom ON %s
     FOR EACH ROW EXECUTE FUNCTION public.cdb_update_the_geom_webmercator()', tbl);

  EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING gist (the_geom)',
                 left(short, 50) || '_the_geom_idx', tbl);
  EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING gist (the_geom_webmercator)',
                 left(short, 50) || '_the_geom_webmercator_idx', tbl);
  -- Its changes announced, whoever writes (sqlpass.track_changes).
  PERFORM sqlpass.track_changes(reloid);
  RETURN reloid;
END
$fn$;

CREATE OR REPLACE FUNCTION public.cdb_cartodbfytable(reloid regclass) RETURNS regclass
LANGUAGE sql VOLATILE SECURITY INVOKER AS $fn$
  SELECT public.cdb_cartodbfytable(NULL::text, reloid)
$fn$;

GRANT EXECUTE ON FUNCTION public.cdb_transformtowebmercator(geometry) TO PUBLIC;
GRANT EXECUTE ON FUNCTION public.cdb_cartodbfytable(text, regclass) TO PUBLIC;
GRANT EXECUTE ON FUNCTION public.cdb_cartodbfytable(regclass) TO PUBLIC;
