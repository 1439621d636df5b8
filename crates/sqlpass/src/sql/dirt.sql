-- What a caller could leave on a connection that outlives its transaction: session advisory
-- locks, SQL-level prepared statements, listened channels, cursors WITH HOLD (the only ones that
-- outlive a transaction; pg_cursors also lists the unnamed protocol portal), temporary tables.
-- Non-zero: the connection is closed instead of reused.
select (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid())
     + (select count(*) from pg_prepared_statements where from_sql)
     + (select count(*) from pg_listening_channels())
     + (select count(*) from pg_cursors where is_holdable)
     + (select count(*) from pg_class where relnamespace = pg_my_temp_schema())
