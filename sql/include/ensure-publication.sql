-- Shared body of sql/create-main-publication.sql and sql/create-cloud-publication.sql;
-- not meant to be run directly. Expects the psql variable `publication` (the name) and
-- sets the defaults of the others; see those scripts for the variables.
--
-- Creates the publication for the syncable tables, or brings an existing one to the
-- wanted table list and publish option, each only when it differs (no ALTER at all on
-- a second run). When duplex's schema exists, also keeps duplex.replicated_table (what
-- `duplex check` compares the configuration with) equal to that list. The syncable tables are the ordinary and partitioned tables of
-- `schema` except `local_tables`; the same rule as sql/setup-replication-user.sql.

\set ON_ERROR_STOP on
\if :{?publication}
\else
  DO $$ BEGIN RAISE EXCEPTION 'ensure-publication.sql: variable publication is not set'; END $$;
\endif
\if :{?schema}
\else
  \set schema public
\endif
\if :{?local_tables}
\else
  \set local_tables DeviceFileIndex,DeviceCommandQueue
\endif
\if :{?publish}
\else
  \set publish 'insert, update, delete'
\endif

SET duplex.publication = :'publication';
SET duplex.schema = :'schema';
SET duplex.local_tables = :'local_tables';
SET duplex.publish = :'publish';

DO $$
DECLARE
    v_pub     text := current_setting('duplex.publication');
    v_schema  text := current_setting('duplex.schema');
    v_local   text[] := string_to_array(current_setting('duplex.local_tables'), ',');
    v_publish text[] := string_to_array(replace(current_setting('duplex.publish'), ' ', ''), ',');
    v_nsp     oid;
    v_want    oid[];
    v_list    text;
    v_bad     text;
    v_row     pg_publication%ROWTYPE;
    v_have    oid[];
    v_unknown text[];
BEGIN
    v_unknown := ARRAY(SELECT unnest(v_publish)
                       EXCEPT SELECT unnest('{insert,update,delete,truncate}'::text[]));
    IF cardinality(v_unknown) > 0 THEN
        RAISE EXCEPTION 'publish: unknown operation(s) %', v_unknown;
    END IF;

    SELECT oid INTO v_nsp FROM pg_namespace WHERE nspname = v_schema;
    IF v_nsp IS NULL THEN
        RAISE EXCEPTION 'schema % does not exist in database %', v_schema, current_database();
    END IF;

    v_want := ARRAY(
        SELECT c.oid FROM pg_class AS c
        WHERE c.relnamespace = v_nsp AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname <> ALL (v_local)
        ORDER BY c.relname);
    IF cardinality(v_want) = 0 THEN
        RAISE EXCEPTION 'no table to publish in schema % of database %', v_schema, current_database()
            USING HINT = 'load the application schema first';
    END IF;
    SELECT string_agg(format('%I.%I', v_schema, c.relname), ', ' ORDER BY c.relname)
      INTO v_list FROM pg_class AS c WHERE c.oid = ANY (v_want);

    -- A published table without a usable replica identity makes UPDATE and DELETE on it
    -- fail on this (the publishing) side, i.e. it would break the application. Refuse.
    SELECT string_agg(format('%I.%I', v_schema, c.relname), ', ' ORDER BY c.relname)
      INTO v_bad
      FROM pg_class AS c
     WHERE c.oid = ANY (v_want)
       AND (c.relreplident = 'n'
            OR (c.relreplident = 'd' AND NOT EXISTS (
                    SELECT FROM pg_index AS i WHERE i.indrelid = c.oid AND i.indisprimary))
            OR (c.relreplident = 'i' AND NOT EXISTS (
                    SELECT FROM pg_index AS i WHERE i.indrelid = c.oid AND i.indisreplident)));
    IF v_bad IS NOT NULL THEN
        RAISE EXCEPTION 'tables without a primary key (replica identity): %', v_bad
            USING HINT = 'add a primary key, or list the tables in local_tables';
    END IF;

    -- Where duplex runs too (its schema exists), keep its record of the replicated tables
    -- (duplex.replicated_table, written on both instances by `duplex setup`) equal to
    -- what this publication is set to below, so `duplex check` does not compare the
    -- configuration with a selection this script has since changed. Without duplex's
    -- schema nothing is recorded: this script does not create duplex's tables (duplex's
    -- migrations do), and duplex then compares with the publication itself.
    IF to_regclass('duplex.replicated_table') IS NOT NULL THEN
        LOCK TABLE duplex.replicated_table IN EXCLUSIVE MODE;
        DELETE FROM duplex.replicated_table AS r
         WHERE NOT EXISTS (SELECT FROM pg_class AS c
                            WHERE c.oid = ANY (v_want)
                              AND r.schema_name = v_schema AND r.table_name = c.relname);
        INSERT INTO duplex.replicated_table (schema_name, table_name)
        SELECT v_schema, c.relname FROM pg_class AS c WHERE c.oid = ANY (v_want)
        ON CONFLICT (schema_name, table_name) DO NOTHING;
    END IF;

    SELECT * INTO v_row FROM pg_publication WHERE pubname = v_pub;
    IF NOT FOUND THEN
        EXECUTE format('CREATE PUBLICATION %I FOR TABLE %s WITH (publish = %L)',
                       v_pub, v_list, array_to_string(v_publish, ', '));
        RAISE NOTICE 'publication %: created for %', v_pub, v_list;
        RETURN;
    END IF;

    IF v_row.puballtables THEN
        RAISE EXCEPTION 'publication % exists and is FOR ALL TABLES, which would publish the local tables', v_pub
            USING HINT = format('DROP PUBLICATION %I, then run this again', v_pub);
    END IF;
    IF EXISTS (SELECT FROM pg_publication_namespace WHERE pnpubid = v_row.oid) THEN
        RAISE EXCEPTION 'publication % exists and publishes whole schemas (FOR TABLES IN SCHEMA)', v_pub
            USING HINT = format('DROP PUBLICATION %I, then run this again', v_pub);
    END IF;

    v_have := ARRAY(SELECT prrelid FROM pg_publication_rel WHERE prpubid = v_row.oid ORDER BY prrelid);
    IF v_have IS DISTINCT FROM ARRAY(SELECT unnest(v_want) ORDER BY 1)
       OR EXISTS (SELECT FROM pg_publication_rel
                  WHERE prpubid = v_row.oid AND (prqual IS NOT NULL OR prattrs IS NOT NULL))
    THEN
        EXECUTE format('ALTER PUBLICATION %I SET TABLE %s', v_pub, v_list);
        RAISE NOTICE 'publication %: table list set to %', v_pub, v_list;
    ELSE
        RAISE NOTICE 'publication %: table list unchanged', v_pub;
    END IF;

    IF (v_row.pubinsert, v_row.pubupdate, v_row.pubdelete, v_row.pubtruncate)
       IS DISTINCT FROM ('insert' = ANY (v_publish), 'update' = ANY (v_publish),
                         'delete' = ANY (v_publish), 'truncate' = ANY (v_publish))
    THEN
        EXECUTE format('ALTER PUBLICATION %I SET (publish = %L)',
                       v_pub, array_to_string(v_publish, ', '));
        RAISE NOTICE 'publication %: publish set to %', v_pub, array_to_string(v_publish, ', ');
    END IF;
END
$$;

RESET duplex.publication;
RESET duplex.schema;
RESET duplex.local_tables;
RESET duplex.publish;
