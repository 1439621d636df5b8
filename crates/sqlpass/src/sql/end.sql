-- Run after a reader's sandboxed transaction was rolled back (which undid what it did to the
-- session: settings, the role, LISTEN, cursors, temporary tables created in it); session
-- advisory locks are released; the one row says whether the connection may be reused: the
-- current user is the login role, no SQL-level prepared statement was left but the sandbox's
-- own, and no temporary table. Prepared once per connection as sqlpass_end.
SELECT current_user = session_user
   AND NOT EXISTS (SELECT FROM pg_prepared_statements
                   WHERE from_sql AND name NOT LIKE 'sqlpass\_%')
   AND (pg_my_temp_schema() = 0
        OR NOT EXISTS (SELECT FROM pg_class WHERE relnamespace = pg_my_temp_schema()))
FROM (SELECT pg_advisory_unlock_all()) AS unlocked
