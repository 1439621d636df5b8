-- Tables and views with a geometry column the current role may read: the column, its SRID and
-- type, an integer column usable as feature id (a one-column primary key, else the first of the
-- names in $1 that is an integer column: views have no key), and the other columns with the
-- types tiles can carry (text, integers, floats, numeric, bool).
select g.f_table_schema::text as schema,
       g.f_table_name::text as "table",
       g.f_geometry_column::text as geometry_column,
       g.srid,
       g.type::text as geometry_type,
       coalesce(
         (select a.attname::text
            from pg_index i
            join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
           where i.indrelid = c.oid and i.indisprimary and i.indnatts = 1
             and a.atttypid in ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)),
         (select a.attname::text
            from pg_attribute a
           where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
             and a.atttypid in ('int2'::regtype, 'int4'::regtype, 'int8'::regtype)
             and a.attname::text = any($1::text[])
           order by array_position($1::text[], a.attname::text)
           limit 1)) as id_column,
       coalesce((select array_agg(a.attname::text order by a.attnum)
          from pg_attribute a
         where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
           and a.atttypid in ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype,
                              'int2'::regtype, 'int4'::regtype, 'int8'::regtype,
                              'float4'::regtype, 'float8'::regtype, 'numeric'::regtype, 'bool'::regtype)),
         '{}') as columns,
       coalesce((select array_agg(format_type(a.atttypid, null) order by a.attnum)
          from pg_attribute a
         where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
           and a.atttypid in ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype,
                              'int2'::regtype, 'int4'::regtype, 'int8'::regtype,
                              'float4'::regtype, 'float8'::regtype, 'numeric'::regtype, 'bool'::regtype)),
         '{}') as column_types
from geometry_columns g
join pg_class c on c.relname = g.f_table_name
join pg_namespace n on n.oid = c.relnamespace and n.nspname = g.f_table_schema
where has_table_privilege(c.oid, 'select')
order by 1, 2, 3
