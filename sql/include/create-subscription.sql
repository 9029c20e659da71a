-- Shared body of sql/create-cloud-subscription.sql and sql/create-main-subscription.sql;
-- not meant to be run directly. Those scripts set, as psql variables: subscription,
-- publication, copy_data, peer_host, peer_port, peer_db, repl_user, repl_password,
-- slot_name and conn_extra.
--
-- CREATE SUBSCRIPTION that creates its slot cannot run inside a transaction block, so
-- not in a DO block either: the existence test is a query whose result \gset turns into
-- a psql variable for \if. An existing subscription is not re-enabled or re-created;
-- options that differ from the wanted ones are reported as warnings. Like `duplex setup`,
-- an existing enabled subscription picks up the publication's current table list
-- (REFRESH PUBLICATION, which changes nothing when the list is the same);
-- tests/sql_scripts.rs checks that both routes leave the same catalog state.

\set ON_ERROR_STOP on

SELECT EXISTS (
    SELECT FROM pg_subscription
    WHERE subname = :'subscription'
      -- pg_subscription is shared by all databases of the cluster.
      AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
) AS duplex_subscription_exists
\gset

\if :duplex_subscription_exists
  SET duplex.subscription = :'subscription';
  SET duplex.publication = :'publication';
  SET duplex.slot_name = :'slot_name';
  DO $$
  DECLARE
      v_name text := current_setting('duplex.subscription');
      v_sub  pg_subscription%ROWTYPE;
  BEGIN
      SELECT * INTO STRICT v_sub FROM pg_subscription
      WHERE subname = v_name
        AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database());
      RAISE NOTICE 'subscription % exists: left as it is', v_name;
      IF v_sub.subslotname IS DISTINCT FROM current_setting('duplex.slot_name') THEN
          RAISE WARNING 'subscription % uses slot %, not %',
              v_name, v_sub.subslotname, current_setting('duplex.slot_name');
      END IF;
      IF v_sub.subpublications <> ARRAY[current_setting('duplex.publication')] THEN
          RAISE WARNING 'subscription % subscribes to %, not {%}',
              v_name, v_sub.subpublications, current_setting('duplex.publication');
      END IF;
      IF v_sub.suborigin <> 'none' THEN
          RAISE WARNING 'subscription % has origin = %: changes would loop between the sides',
              v_name, v_sub.suborigin
              USING HINT = format('ALTER SUBSCRIPTION %I SET (origin = none)', v_name);
      END IF;
      IF v_sub.subdisableonerr THEN
          RAISE WARNING 'subscription % has disable_on_error = true: a dropped link will disable it', v_name
              USING HINT = format('ALTER SUBSCRIPTION %I SET (disable_on_error = false)', v_name);
      END IF;
      IF NOT v_sub.subenabled THEN
          RAISE WARNING 'subscription % is disabled (see runbooks/subscription-disabled.md)', v_name
              USING HINT = format('after fixing the cause: ALTER SUBSCRIPTION %I ENABLE', v_name);
      END IF;
  END
  $$;
  RESET duplex.subscription;
  RESET duplex.publication;
  RESET duplex.slot_name;
  -- REFRESH PUBLICATION cannot run in a DO block either: \gexec runs the generated statement.
  SELECT format('ALTER SUBSCRIPTION %I REFRESH PUBLICATION WITH (copy_data = %s)',
                :'subscription', :'copy_data')
    FROM pg_subscription
   WHERE subname = :'subscription' AND subenabled
     AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  \gexec
\else
  -- Connection string values are quoted for libpq: single quotes, with \ and ' escaped.
  SELECT format('host=%s port=%s dbname=%s user=%s password=%s',
                '''' || regexp_replace(:'peer_host', '([\\''])', '\\\1', 'g') || '''',
                '''' || regexp_replace(:'peer_port', '([\\''])', '\\\1', 'g') || '''',
                '''' || regexp_replace(:'peer_db', '([\\''])', '\\\1', 'g') || '''',
                '''' || regexp_replace(:'repl_user', '([\\''])', '\\\1', 'g') || '''',
                '''' || regexp_replace(:'repl_password', '([\\''])', '\\\1', 'g') || '''')
         || CASE WHEN :'conn_extra' = '' THEN '' ELSE ' ' || :'conn_extra' END
         AS duplex_conninfo
  \gset
  CREATE SUBSCRIPTION :"subscription"
      CONNECTION :'duplex_conninfo'
      PUBLICATION :"publication"
      WITH (copy_data = :copy_data,
            origin = none,
            disable_on_error = false,
            streaming = parallel,
            slot_name = :'slot_name');
  \unset duplex_conninfo
\endif
