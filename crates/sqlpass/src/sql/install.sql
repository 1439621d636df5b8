-- What sqlpass installs in a database, once, as a role that may create schemas: a function that
-- finds the tables a statement reads from its plan, inside PostgreSQL, so that a plan's text
-- (whose folded constants a caller controls) never has to cross the wire. It runs as its caller
-- (SECURITY INVOKER) with the caller's search_path, so names resolve as in the caller's query;
-- everything it calls is schema-qualified.
CREATE SCHEMA IF NOT EXISTS sqlpass;
GRANT USAGE ON SCHEMA sqlpass TO PUBLIC;
CREATE OR REPLACE FUNCTION sqlpass.query_tables(query text) RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $fn$
DECLARE
  plan json;
BEGIN
  EXECUTE 'EXPLAIN (FORMAT JSON, VERBOSE) ' || query INTO plan;
  -- Read line by line, not as jsonb nor by a regular expression over the whole text: a folded
  -- constant in the plan can be longer than either can take. EXPLAIN writes each key on a line
  -- of its own, and "Schema" on the line after "Relation Name"; the values are JSON strings.
  RETURN ARRAY(
    WITH line AS (
      SELECT n, pg_catalog.btrim(l) AS l
      FROM pg_catalog.string_to_table(plan::text, E'\n') WITH ORDINALITY AS t(l, n)
    )
    SELECT DISTINCT
      (pg_catalog.rtrim(pg_catalog.substr(s.l, 11), ',')::json #>> '{}') || '.' ||
      (pg_catalog.rtrim(pg_catalog.substr(r.l, 18), ',')::json #>> '{}')
    FROM line AS r JOIN line AS s ON s.n = r.n + 1
    WHERE r.l LIKE '"Relation Name": "%' AND s.l LIKE '"Schema": "%'
    ORDER BY 1);
END
$fn$;
GRANT EXECUTE ON FUNCTION sqlpass.query_tables(text) TO PUBLIC;
