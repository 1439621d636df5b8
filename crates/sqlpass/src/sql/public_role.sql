-- The statement that creates the public role, or resets an existing one to least privilege.
-- $1 role name, $2 password.
select case
  when exists (select 1 from pg_roles where rolname = $1::text)
  then format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD %L', $1::text, $2::text)
  else format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD %L', $1::text, $2::text)
end
