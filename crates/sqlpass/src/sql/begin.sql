-- Sets up a sandboxed transaction just begun, and says what the session needs to know of its
-- connection: prepared once per connection as sqlpass_open (our own text).
-- $1 statement_timeout, $2 lock_timeout, $3 idle_in_transaction_session_timeout (ms), $4 jit.
SELECT pg_backend_pid(), current_database()::text,
       to_regtype('geometry')::oid::int8, to_regtype('geography')::oid::int8,
       to_regprocedure('sqlpass.query_tables(text)') IS NOT NULL,
       set_config('statement_timeout', $1, true),
       set_config('lock_timeout', $2, true),
       set_config('idle_in_transaction_session_timeout', $3, true),
       set_config('jit', $4, true),
       set_config('standard_conforming_strings', 'on', true),
       session_user::text
