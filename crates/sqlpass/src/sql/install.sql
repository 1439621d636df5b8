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

-- Table changes, announced: a statement-level trigger on a tracked table notifies channel
-- `sqlpass_table_change` with the table's `schema.table` after each statement that changes
-- it. PostgreSQL delivers notifications when the transaction commits (never for one rolled
-- back) and folds the same table's of one transaction into one. Whoever writes — an API, a
-- batch job, COPY, a client of its own — caches reading the table hear of it.
-- SECURITY DEFINER: callers' roles may not notify (pg_notify is revoked from them), their
-- writes announce all the same; a trigger function cannot be called by itself.
CREATE OR REPLACE FUNCTION sqlpass.announce_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
BEGIN
  PERFORM pg_catalog.pg_notify('sqlpass_table_change', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
  RETURN NULL;
EXCEPTION WHEN insufficient_privilege THEN
  -- Its owner may not notify either: the write goes on unannounced, never refused.
  RETURN NULL;
END
$fn$;
GRANT EXECUTE ON FUNCTION sqlpass.announce_change() TO PUBLIC;
-- Tracks `rel` (idempotent); needs its owner or a superuser.
CREATE OR REPLACE FUNCTION sqlpass.track_changes(rel regclass) RETURNS void
LANGUAGE plpgsql SECURITY INVOKER SET search_path = pg_catalog AS $fn$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger
                 WHERE tgrelid = rel AND tgname = 'sqlpass_announce_change') THEN
    EXECUTE pg_catalog.format(
      'CREATE TRIGGER sqlpass_announce_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE '
      'ON %s FOR EACH STATEMENT EXECUTE FUNCTION sqlpass.announce_change()', rel);
  END IF;
END
$fn$;
GRANT EXECUTE ON FUNCTION sqlpass.track_changes(regclass) TO PUBLIC;
-- As a superuser: every table made from now on is tracked (an event trigger), and every one
-- there is now. Otherwise tables are tracked by their owners (CDB_CartodbfyTable does it).
CREATE OR REPLACE FUNCTION sqlpass.track_new_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $fn$
DECLARE
  made record;
BEGIN
  FOR made IN SELECT objid FROM pg_catalog.pg_event_trigger_ddl_commands()
              WHERE object_type = 'table' AND command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
                AND schema_name NOT IN ('pg_catalog', 'information_schema', 'sqlpass')
                AND schema_name NOT LIKE 'pg_temp%'
  LOOP
    PERFORM sqlpass.track_changes(made.objid::regclass);
  END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION sqlpass.track_new_tables() FROM PUBLIC;
DO $do$
DECLARE
  t regclass;
BEGIN
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    DROP EVENT TRIGGER IF EXISTS sqlpass_track_new_tables;
    CREATE EVENT TRIGGER sqlpass_track_new_tables ON ddl_command_end
      WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
      EXECUTE FUNCTION sqlpass.track_new_tables();
    FOR t IN SELECT c.oid::regclass FROM pg_catalog.pg_class AS c
             JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
               AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'sqlpass', 'topology')
               AND n.nspname NOT LIKE 'pg_%'
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend AS d
                               WHERE d.classid = 'pg_catalog.pg_class'::regclass
                                 AND d.objid = c.oid AND d.deptype = 'e')
    LOOP
      PERFORM sqlpass.track_changes(t);
    END LOOP;
  END IF;
END
$do$;
