-- Create the replication role duplex's subscriptions log in as, and grant it what the
-- initial table copy needs. Run it, as a superuser, in the application database of
-- BOTH instances (each side's subscription logs in to the other side as this role):
--
--   psql "$DATABASE_URL" -v repl_password='...' -f sql/setup-replication-user.sql
--
-- Variables:
--   repl_password    required; the role's password, set when the role is created
--   repl_user        the role (default duplex_replicator)
--   schema           the application schema (default public)
--   local_tables     comma-separated tables of that schema that are never replicated
--                    (default DeviceFileIndex,DeviceCommandQueue); exact, case-sensitive names
--   update_password  on: also set the password of an existing role (default off)
--
-- What it does, each step only when it is not done yet, so a second run changes nothing:
--   1. CREATE ROLE repl_user LOGIN REPLICATION, password repl_password, and none of
--      SUPERUSER, CREATEDB, CREATEROLE, BYPASSRLS. An existing role that lacks LOGIN or
--      REPLICATION gets them; an existing role that is a superuser is an error (this
--      script does not take rights away that someone else gave).
--   2. GRANT CONNECT on the current database, USAGE on the schema, and SELECT on every
--      syncable table: each ordinary or partitioned table of the schema except the
--      local_tables. SELECT is what the initial copy (tablesync) needs; the streamed
--      changes after it are decoded from WAL and need no table privilege. Grants are
--      explicit even where PUBLIC already has the privilege, so revoking it from PUBLIC
--      later does not break replication.
--
-- Tables created after this ran are not granted: run it again after a migration that
-- adds a table (as for the publications, which list their tables too). There is
-- deliberately no ALTER DEFAULT PRIVILEGES: a new table is local until someone decides
-- to sync it, and the re-run is the point where that decision is made.
--
-- The password appears in the CREATE ROLE statement sent to the server: a server that
-- logs DDL (log_statement = 'ddl' or 'all'), or logs the statement of a failing one,
-- would write it to its log. scripts/setup-replication.sh turns that logging off for its
-- sessions; run by hand, do the same:
--   PGOPTIONS='-c log_statement=none -c log_min_error_statement=panic' psql ...
-- It is stored hashed per password_encryption (scram-sha-256 by default). `duplex setup`
-- sends a SCRAM verifier instead, so the password itself never reaches the server.

\set ON_ERROR_STOP on
\if :{?repl_user}
\else
  \set repl_user duplex_replicator
\endif
\if :{?schema}
\else
  \set schema public
\endif
\if :{?local_tables}
\else
  \set local_tables DeviceFileIndex,DeviceCommandQueue
\endif
\if :{?update_password}
\else
  \set update_password off
\endif
\if :{?repl_password}
\else
  DO $$ BEGIN
    RAISE EXCEPTION 'setup-replication-user.sql: variable repl_password is required'
      USING HINT = 'psql -v repl_password=... -f sql/setup-replication-user.sql';
  END $$;
\endif

-- psql does not substitute variables inside a DO body: hand them over as settings of
-- this session (not the password, which only \gexec below sees).
SET duplex.repl_user = :'repl_user';
SET duplex.schema = :'schema';
SET duplex.local_tables = :'local_tables';

-- 1. The role. Created through \gexec so that the password never lands in a setting.
SELECT format('CREATE ROLE %I WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE '
              'NOBYPASSRLS PASSWORD %L', :'repl_user', :'repl_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'repl_user')
\gexec

\if :update_password
SELECT format('ALTER ROLE %I WITH PASSWORD %L', :'repl_user', :'repl_password')
\gexec
\endif

DO $$
DECLARE
    v_user   text := current_setting('duplex.repl_user');
    v_schema text := current_setting('duplex.schema');
    v_local  text[] := string_to_array(current_setting('duplex.local_tables'), ',');
    v_role   pg_roles%ROWTYPE;
    v_nsp    oid;
    v_table  record;
    v_done   text[] := '{}';
BEGIN
    SELECT * INTO STRICT v_role FROM pg_roles WHERE rolname = v_user;
    IF v_role.rolsuper THEN
        RAISE EXCEPTION 'role % is a superuser; duplex replicates as an ordinary role', v_user
            USING HINT = format('ALTER ROLE %I NOSUPERUSER, then run this again', v_user);
    END IF;
    IF NOT (v_role.rolcanlogin AND v_role.rolreplication) THEN
        EXECUTE format('ALTER ROLE %I WITH LOGIN REPLICATION', v_user);
        v_done := v_done || 'LOGIN REPLICATION'::text;
    END IF;

    SELECT oid INTO v_nsp FROM pg_namespace WHERE nspname = v_schema;
    IF v_nsp IS NULL THEN
        RAISE EXCEPTION 'schema % does not exist in database %', v_schema, current_database();
    END IF;

    -- Explicit grants only: aclexplode of the ACL, not has_*_privilege(), which would
    -- also count what PUBLIC has.
    IF NOT EXISTS (
        SELECT FROM pg_database AS d,
             aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) AS a
        WHERE d.datname = current_database()
          AND a.grantee = v_role.oid AND a.privilege_type = 'CONNECT')
    THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), v_user);
        v_done := v_done || format('CONNECT ON DATABASE %I', current_database());
    END IF;

    IF NOT EXISTS (
        SELECT FROM pg_namespace AS n,
             aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a
        WHERE n.oid = v_nsp AND a.grantee = v_role.oid AND a.privilege_type = 'USAGE')
    THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', v_schema, v_user);
        v_done := v_done || format('USAGE ON SCHEMA %I', v_schema);
    END IF;

    FOR v_table IN
        SELECT c.oid, c.relname
        FROM pg_class AS c
        WHERE c.relnamespace = v_nsp
          AND c.relkind IN ('r', 'p')
          AND NOT c.relispartition
          AND c.relname <> ALL (v_local)
          AND NOT EXISTS (
              SELECT FROM aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) AS a
              WHERE a.grantee = v_role.oid AND a.privilege_type = 'SELECT')
        ORDER BY c.relname
    LOOP
        EXECUTE format('GRANT SELECT ON TABLE %I.%I TO %I', v_schema, v_table.relname, v_user);
        v_done := v_done || format('SELECT ON %I.%I', v_schema, v_table.relname);
    END LOOP;

    IF cardinality(v_done) = 0 THEN
        RAISE NOTICE 'role %: nothing to change', v_user;
    ELSE
        RAISE NOTICE 'role %: granted %', v_user, array_to_string(v_done, ', ');
    END IF;
END
$$;

RESET duplex.repl_user;
RESET duplex.schema;
RESET duplex.local_tables;
