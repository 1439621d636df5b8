-- Takes from a writer's session whatever a caller could leave on it: cursors, listened
-- channels, temporary tables, settings (RESET ALL leaves the role alone, SET SESSION
-- AUTHORIZATION DEFAULT resets it), session advisory locks. Run inside the writer's transaction
-- before its COMMIT (or after its ROLLBACK), so that behind a transaction-mode pooler it reaches
-- the server connection the statement ran on. The one row says whether the connection may be
-- reused: the current user is the login role and no SQL-level prepared statement is left but
-- the sandbox's own.
CLOSE ALL;
UNLISTEN *;
DISCARD TEMP;
RESET ALL;
SET SESSION AUTHORIZATION DEFAULT;
SELECT current_user = session_user
   AND NOT EXISTS (SELECT FROM pg_prepared_statements
                   WHERE from_sql AND name NOT LIKE 'sqlpass\_%')
FROM (SELECT pg_advisory_unlock_all()) AS unlocked;
