-- Publication duplex_main_to_cloud: the changes made on main that cloud subscribes to
-- (cloud's subscription of the same name, sql/create-cloud-subscription.sql). Run it
-- on MAIN, in the application database, as a superuser or the owner of the tables:
--
--   psql "$MAIN_DB_URL" -f sql/create-main-publication.sql
--
-- Variables (all optional):
--   schema        the application schema (default public)
--   local_tables  comma-separated tables of that schema that are never replicated
--                 (default DeviceFileIndex,DeviceCommandQueue); exact, case-sensitive names
--   publish       operations to publish (default 'insert, update, delete')
--
-- It publishes every ordinary or partitioned table of the schema except local_tables.
-- If the publication exists, its table list is set (ALTER PUBLICATION ... SET TABLE)
-- and its publish option changed only where they differ, so a second run changes
-- nothing. Run it again after a migration that adds a table, together with
-- sql/setup-replication-user.sql (the new table needs SELECT for the initial copy),
-- then ALTER SUBSCRIPTION ... REFRESH PUBLICATION on the other side.
--
-- TRUNCATE is not published by default: a TRUNCATE on either side would empty the
-- table on both, and applying it fails anyway on a side where a local-only table has a
-- foreign key to the truncated one (a failed apply disables the subscription).
--
-- Tables without a primary key are refused: once published, UPDATE and DELETE on them
-- would fail on this side.

-- Set here too: psql does not stop the whole run on an error in an \ir'd file when
-- ON_ERROR_STOP is only set inside that file.
\set ON_ERROR_STOP on
\set publication duplex_main_to_cloud
\ir include/ensure-publication.sql
