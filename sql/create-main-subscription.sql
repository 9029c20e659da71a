-- Subscription duplex_cloud_to_main: main receives cloud's changes. Run it on MAIN, in
-- the application database, as a superuser, SECOND: only after cloud's subscription
-- duplex_main_to_cloud (sql/create-cloud-subscription.sql) finished its initial copy,
-- i.e. on cloud every row of pg_subscription_rel for that subscription is in state 'r'.
-- scripts/setup-replication.sh checks that before it runs this.
--
--   psql "$MAIN_DB_URL" -v cloud_host=db.cloud.example.com -v cloud_port=5432 \
--        -v cloud_db=app -v repl_password=... -f sql/create-main-subscription.sql
--
-- Variables:
--   cloud_host     required; cloud's host name or address, as seen from the main server
--   cloud_port     cloud's port (default 5432)
--   cloud_db       cloud's database (default: the name of the current database)
--   repl_password  required; password of repl_user on cloud
--   repl_user      the role created on cloud by sql/setup-replication-user.sql
--                  (default duplex_replicator)
--   slot_name      the replication slot this creates on cloud (default
--                  duplex_cloud_to_main); slot names are per cluster
--   conn_extra     more libpq settings appended to the connection string, e.g.
--                  'sslmode=verify-full' (default none)
--
-- The connection string the main server uses to reach cloud (values quoted for libpq):
--   host='<cloud_host>' port='<cloud_port>' dbname='<cloud_db>' user='<repl_user>'
--   password='<repl_password>' <conn_extra>
-- It is stored in pg_subscription.subconninfo, readable only by superusers.
--
-- Options and why:
--   copy_data = false     main is the source of the initial data: cloud copied main's
--                         rows through its own subscription. Copying cloud's tables back
--                         would insert every row a second time (duplicate keys, which
--                         stop the subscription). Only changes made on cloud from the
--                         moment this creates its slot on cloud are sent to main; so
--                         create it before the application writes on cloud.
--   origin = none         cloud sends main only the changes made on cloud itself, not
--                         the ones cloud received from main by replication (those carry
--                         a replication origin). Without it every change made on main
--                         would come back to main and loop. The rows cloud's initial copy
--                         writes carry an origin too (the tablesync worker's own,
--                         pg_<subid>_<relid>), so even a copy still running when this is
--                         created is not sent back (tested on PostgreSQL 18). Waiting for
--                         the copy is still the rule: it does not rest on that detail, and
--                         a failed copy is found before the second direction exists.
--   disable_on_error = false  on purpose: with true, PostgreSQL also disables the
--                         subscription when the link to the publisher drops (the lost
--                         connection is raised as an error in the apply loop; measured
--                         on PostgreSQL 18), so every outage would need a person. An
--                         apply error instead makes the worker retry; duplex raises a
--                         FAILED alert when the error count keeps rising.
--   streaming = parallel  a large transaction is streamed before it commits and applied
--                         by parallel apply workers (PostgreSQL 16+).
--   slot_name             as above; the slot keeps cloud's WAL until main confirmed it.
--
-- An existing subscription of this name (in this database) is left as it is, so a
-- second run changes nothing; it only warns where its options differ.

\set ON_ERROR_STOP on
\if :{?cloud_host}
\else
  DO $$ BEGIN
    RAISE EXCEPTION 'create-main-subscription.sql: variable cloud_host is required';
  END $$;
\endif
\if :{?repl_password}
\else
  DO $$ BEGIN
    RAISE EXCEPTION 'create-main-subscription.sql: variable repl_password is required';
  END $$;
\endif
\if :{?cloud_port}
\else
  \set cloud_port 5432
\endif
\if :{?cloud_db}
\else
  SELECT current_database() AS cloud_db \gset
\endif
\if :{?repl_user}
\else
  \set repl_user duplex_replicator
\endif
\if :{?slot_name}
\else
  \set slot_name duplex_cloud_to_main
\endif
\if :{?conn_extra}
\else
  \set conn_extra ''
\endif

\set subscription duplex_cloud_to_main
\set publication duplex_cloud_to_main
\set copy_data false
\set peer_host :cloud_host
\set peer_port :cloud_port
\set peer_db :cloud_db
\ir include/create-subscription.sql
