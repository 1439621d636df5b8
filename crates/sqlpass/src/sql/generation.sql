-- Appended to begin.sql for a session with a plan cache: the database's DDL generation, NULL
-- when its event trigger is missing or disabled (sqlpass::install).
     , (SELECT g.n FROM sqlpass.generation AS g
        WHERE EXISTS (SELECT FROM pg_catalog.pg_event_trigger
                      WHERE evtname = 'sqlpass_generation' AND evtenabled <> 'D'))
