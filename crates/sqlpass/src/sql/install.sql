-- What sqlpass installs in a database, once, as a role that may create schemas: a function that
-- finds the tables a statement reads from its plan, inside PostgreSQL, so that a plan's text
-- never has to cross the wire. It runs as its caller (SECURITY INVOKER) with the caller's
-- search_path, so names resolve as in the caller's query; everything it calls is qualified.
SET LOCAL client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS sqlpass;
GRANT USAGE ON SCHEMA sqlpass TO PUBLIC;
CREATE OR REPLACE FUNCTION sqlpass.query_tables(query text) RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $fn$
DECLARE
  plan text;
BEGIN
  -- Not VERBOSE: output lists (where a folded constant of any size can stand) are left out.
  -- The price is that relations come without their schema: every schema's relation of that
  -- name is named, which may name a table too many, never one too few.
  BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON) ' || query INTO plan;
  EXCEPTION WHEN program_limit_exceeded OR out_of_memory OR internal_error THEN
    RAISE EXCEPTION 'the plan of this statement is too large to find the tables it reads'
      USING ERRCODE = 'program_limit_exceeded';
  END;
  -- Read line by line (EXPLAIN writes each key on a line of its own; values are JSON
  -- strings), not as jsonb nor by a regular expression over the whole text.
  RETURN ARRAY(
    SELECT DISTINCT n.nspname || '.' || c.relname
    FROM pg_catalog.string_to_table(plan, E'\n') AS line,
         LATERAL (SELECT pg_catalog.btrim(line) AS l) AS t,
         pg_catalog.pg_class AS c
         JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE t.l LIKE '"Relation Name": "%'
      AND c.relname = (pg_catalog.rtrim(pg_catalog.substr(t.l, 18), ',')::json #>> '{}')
      AND c.relkind IN ('r', 'p', 'm', 'f')
    ORDER BY 1);
END
$fn$;
GRANT EXECUTE ON FUNCTION sqlpass.query_tables(text) TO PUBLIC;

-- The DDL generation: a counter bumped in every transaction that runs a DDL command, visible
-- when that transaction commits (a row, not a sequence, whose next value would show before
-- the change it stands for). Statement descriptions kept by `Plans` are valid for one
-- generation. Creating the event trigger needs a superuser: without it, there is no
-- generation to read, and every run describes its statement.
CREATE TABLE IF NOT EXISTS sqlpass.generation (n bigint NOT NULL);
INSERT INTO sqlpass.generation (n) SELECT 0 WHERE NOT EXISTS (SELECT FROM sqlpass.generation);
REVOKE ALL ON sqlpass.generation FROM PUBLIC;
GRANT SELECT ON sqlpass.generation TO PUBLIC;
CREATE OR REPLACE FUNCTION sqlpass.next_generation() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  UPDATE sqlpass.generation SET n = n + 1;
END
$fn$;
REVOKE ALL ON FUNCTION sqlpass.next_generation() FROM PUBLIC;
DO $do$
BEGIN
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    DROP EVENT TRIGGER IF EXISTS sqlpass_generation;
    CREATE EVENT TRIGGER sqlpass_generation ON ddl_command_end
      EXECUTE FUNCTION sqlpass.next_generation();
  END IF;
END
$do$;
