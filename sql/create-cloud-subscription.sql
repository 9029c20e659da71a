-- Subscription duplex_main_to_cloud: cloud receives main's changes. Run it on CLOUD, in
-- the application database, as a superuser, FIRST (before main's subscription):
--
--   psql "$CLOUD_DB_URL" -v main_host=onsite.example.net -v main_port=5432 \
--        -v main_db=app -v repl_password=... -f sql/create-cloud-subscription.sql
--
-- Variables:
--   main_host      required; main's host name or address, as seen from the cloud server
--   main_port      main's port (default 5432)
--   main_db        main's database (default: the name of the current database)
--   repl_password  required; password of repl_user on main
--   repl_user      the role created on main by sql/setup-replication-user.sql
--                  (default duplex_replicator)
--   slot_name      the replication slot this creates on main (default duplex_main_to_cloud);
--                  slot names are per cluster, not per database, so two subscriptions to
--                  one cluster need two names
--   conn_extra     more libpq settings appended to the connection string, e.g.
--                  'sslmode=verify-full sslrootcert=/etc/ssl/main-ca.pem' (default none)
--
-- The connection string the cloud server uses to reach main (values quoted for libpq):
--   host='<main_host>' port='<main_port>' dbname='<main_db>' user='<repl_user>'
--   password='<repl_password>' <conn_extra>
-- It is stored in pg_subscription.subconninfo, readable only by superusers.
--
-- Preconditions: the schema is loaded on cloud with the syncable tables empty; on main,
-- sql/setup-replication-user.sql and sql/create-main-publication.sql have run and
-- pg_hba.conf lets repl_user connect from cloud.
--
-- Options and why:
--   copy_data = true      cloud starts with the tables empty and copies main's rows
--                         (one tablesync worker per table, then streaming takes over).
--                         Main is where the data already is, so the initial copy goes
--                         main -> cloud only; main's subscription does not copy.
--   origin = none         cloud's publication does not send back what cloud received by
--                         replication (applied changes carry a replication origin),
--                         so a row never loops main -> cloud -> main.
--   disable_on_error = false  on purpose: with true, PostgreSQL also disables the
--                         subscription when the link to the publisher drops (the lost
--                         connection is raised as an error in the apply loop; measured
--                         on PostgreSQL 18), so every outage would need a person. An
--                         apply error instead makes the worker retry; duplex raises a
--                         FAILED alert when the error count keeps rising.
--   streaming = parallel  a large transaction is streamed before it commits and applied
--                         by parallel apply workers (PostgreSQL 16+), instead of waiting
--                         for the commit on main.
--   slot_name             as above; the slot keeps main's WAL until cloud confirmed it.
--
-- An existing subscription of this name (in this database) is left as it is, so a
-- second run changes nothing; it only warns where its options differ. Once this
-- subscription finished its initial copy (every row of pg_subscription_rel for it in
-- state 'r'), run sql/create-main-subscription.sql on main.

\set ON_ERROR_STOP on
\if :{?main_host}
\else
  DO $$ BEGIN
    RAISE EXCEPTION 'create-cloud-subscription.sql: variable main_host is required';
  END $$;
\endif
\if :{?repl_password}
\else
  DO $$ BEGIN
    RAISE EXCEPTION 'create-cloud-subscription.sql: variable repl_password is required';
  END $$;
\endif
\if :{?main_port}
\else
  \set main_port 5432
\endif
\if :{?main_db}
\else
  SELECT current_database() AS main_db \gset
\endif
\if :{?repl_user}
\else
  \set repl_user duplex_replicator
\endif
\if :{?slot_name}
\else
  \set slot_name duplex_main_to_cloud
\endif
\if :{?conn_extra}
\else
  \set conn_extra ''
\endif

\set subscription duplex_main_to_cloud
\set publication duplex_main_to_cloud
\set copy_data true
\set peer_host :main_host
\set peer_port :main_port
\set peer_db :main_db
\ir include/create-subscription.sql
