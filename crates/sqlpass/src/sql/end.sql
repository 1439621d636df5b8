-- Ends a reader's sandboxed transaction. The rollback undoes what the transaction did to the
-- session (settings, the role, LISTEN, cursors, temporary tables created in it); session
-- advisory locks are released; the one row says whether the connection may be reused: the
-- current user is the login role and no SQL-level prepared statement was left.
ROLLBACK;
SELECT current_user = session_user
   AND NOT EXISTS (SELECT FROM pg_prepared_statements WHERE from_sql)
   AND NOT EXISTS (SELECT FROM pg_class WHERE relnamespace = pg_my_temp_schema())
FROM (SELECT pg_advisory_unlock_all()) AS unlocked;
