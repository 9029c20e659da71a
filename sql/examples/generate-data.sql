-- Realistic example data for sql/examples/app-schema.sql.
--
--   psql "$DATABASE_URL" -v users=100 -v jumps_per_user=50 -f sql/examples/generate-data.sql
--
-- Variables (all optional):
--   users             users to create (default 100)
--   jumps_per_user    JumpLog rows per new user (default 50)
--   devices_per_user  devices per new user (default 2)
--   bucket            bucket named in "storageUrl" (default duplex-main)
--
-- Re-runnable: every run inserts new rows with fresh uuid ids (emails carry a piece of
-- the id), so runs never clash with each other or with rows that came from the other
-- side. One run is one transaction.
--
-- Besides the users, devices and jumps it creates one group per ten new users (members,
-- formation skydives and their participants drawn from those users), and fills the
-- local-only tables "DeviceFileIndex" (one file per jump) and "DeviceCommandQueue"
-- (a few commands per device).

\set ON_ERROR_STOP on
\if :{?users}
\else
  \set users 100
\endif
\if :{?jumps_per_user}
\else
  \set jumps_per_user 50
\endif
\if :{?devices_per_user}
\else
  \set devices_per_user 2
\endif
\if :{?bucket}
\else
  \set bucket duplex-main
\endif

BEGIN;

CREATE TEMP TABLE gen_user ON COMMIT DROP AS
SELECT gen_random_uuid()::text AS id, n,
       (ARRAY['Anna','Ben','Chloe','David','Elena','Felix','Greta','Hugo','Ines','Jonas',
              'Klara','Lukas','Maya','Noah','Olivia','Paul','Quinn','Rosa','Simon','Tara'])
           [1 + floor(random() * 20)::int] AS first_name,
       (ARRAY['Meyer','Schmidt','Fischer','Weber','Wagner','Becker','Hoffmann','Keller',
              'Roth','Vogel','Lang','Brandt','Kuhn','Frank','Berger'])
           [1 + floor(random() * 15)::int] AS last_name,
       now() - random() * interval '3 years' AS created_at
FROM generate_series(1, :users) AS n;

INSERT INTO "User" ("id", "email", "name", "createdAt", "updatedAt")
SELECT id,
       lower(first_name || '.' || last_name || '.' || left(id, 8)) || '@example.com',
       first_name || ' ' || last_name,
       created_at,
       created_at + random() * (now() - created_at)
FROM gen_user;

CREATE TEMP TABLE gen_device ON COMMIT DROP AS
SELECT gen_random_uuid()::text AS id, u.id AS user_id, d,
       u.created_at + random() * interval '30 days' AS created_at
FROM gen_user AS u, generate_series(1, :devices_per_user) AS d;

INSERT INTO "Device" ("id", "name", "userId", "lastSeenAt", "createdAt", "updatedAt")
SELECT id,
       (ARRAY['Altimeter','Helmet cam','Wrist logger','Chest cam'])[1 + (d - 1) % 4]
           || ' ' || upper(left(id, 4)),
       user_id,
       least(now(), created_at + random() * (now() - created_at)),
       created_at,
       created_at
FROM gen_device;

-- Jumps spread over each user's devices, numbered 1.. per user in time order.
CREATE TEMP TABLE gen_jump ON COMMIT DROP AS
SELECT gen_random_uuid()::text AS id, u.id AS user_id, j,
       (SELECT d.id FROM gen_device AS d
         WHERE d.user_id = u.id AND d.d = 1 + (j % :devices_per_user)) AS device_id,
       u.created_at + (now() - u.created_at) * (j::float8 / (:jumps_per_user + 1)) AS created_at
FROM gen_user AS u, generate_series(1, :jumps_per_user) AS j;

INSERT INTO "JumpLog" ("id", "userId", "deviceId", "jumpNumber", "altitude", "freefallTime",
                       "storageUrl", "hash", "fileSize", "createdAt", "updatedAt")
SELECT id, user_id, device_id, j,
       (ARRAY[1200, 3000, 4000, 4000, 4000, 4500])[1 + floor(random() * 6)::int],
       35 + floor(random() * 40)::int,
       format('s3://%s/jumps/%s/%s.bin', :'bucket', user_id, id),
       encode(sha256(convert_to(id || random()::text, 'UTF8')), 'hex'),
       200000 + floor(random() * 4800000)::bigint,
       created_at,
       created_at
FROM gen_jump;

CREATE TEMP TABLE gen_group ON COMMIT DROP AS
SELECT gen_random_uuid()::text AS id, g,
       (SELECT u.id FROM gen_user AS u WHERE u.n = (g - 1) * 10 + 1) AS owner_id
FROM generate_series(1, greatest(1, :users / 10)) AS g;

INSERT INTO "Group" ("id", "name", "description", "ownerId")
SELECT id,
       (ARRAY['Sky Gods','Free Flyers','Big Way','Canopy Crew','Weekend Warriors'])
           [1 + (g - 1) % 5] || ' ' || upper(left(id, 4)),
       'Example group',
       owner_id
FROM gen_group;

-- Members: the ten users following the owner (the last group takes the rest).
INSERT INTO "GroupMember" ("groupId", "userId", "role")
SELECT g.id, u.id, CASE WHEN u.id = g.owner_id THEN 'owner' ELSE 'member' END
FROM gen_group AS g
JOIN gen_user AS u
  ON (u.n - 1) / 10 + 1 = g.g
  OR (g.g = greatest(1, :users / 10) AND (u.n - 1) / 10 + 1 > g.g);

CREATE TEMP TABLE gen_formation ON COMMIT DROP AS
SELECT gen_random_uuid()::text AS id, g.id AS group_id, f,
       now() - random() * interval '1 year' AS jump_date
FROM gen_group AS g, generate_series(1, 3) AS f;

INSERT INTO "FormationSkydive" ("id", "groupId", "name", "jumpDate", "altitude",
                                "plannedSize", "completed")
SELECT f.id, f.group_id, 'Formation ' || f.f || ' ' || upper(left(f.id, 4)), f.jump_date, 4000,
       (SELECT count(*) FROM "GroupMember" AS m WHERE m."groupId" = f.group_id),
       f.jump_date < now() - interval '1 day'
FROM gen_formation AS f;

-- Every member takes part; completed formations link each participant's jump with the
-- same number as the formation (when the member has one).
INSERT INTO "FormationParticipant" ("formationId", "userId", "jumpLogId", "slot")
SELECT f.id, m."userId",
       (SELECT j.id FROM gen_jump AS j WHERE j.user_id = m."userId" AND j.j = f.f),
       row_number() OVER (PARTITION BY f.id ORDER BY m."userId")
FROM gen_formation AS f
JOIN "GroupMember" AS m ON m."groupId" = f.group_id;

-- Local-only tables.
INSERT INTO "DeviceFileIndex" ("deviceId", "path", "fileSize", "hash", "modifiedAt", "jumpLogId")
SELECT l."deviceId", format('/DCIM/JUMP%s.BIN', lpad(l."jumpNumber"::text, 5, '0')),
       l."fileSize", l."hash", l."createdAt", l."id"
FROM "JumpLog" AS l
JOIN gen_jump AS j ON j.id = l."id"
WHERE l."deviceId" IS NOT NULL;

INSERT INTO "DeviceCommandQueue" ("deviceId", "command", "payload", "status", "createdAt",
                                  "processedAt")
SELECT d.id, c.command, c.payload,
       CASE WHEN random() < 0.8 THEN 'done' ELSE 'pending' END,
       now() - random() * interval '7 days',
       NULL
FROM gen_device AS d
CROSS JOIN (VALUES ('sync_clock', '{}'::jsonb),
                   ('download_logs', '{"since": "last"}'::jsonb),
                   ('set_units', '{"altitude": "m"}'::jsonb)) AS c (command, payload);
UPDATE "DeviceCommandQueue" SET "processedAt" = "createdAt" + interval '5 seconds'
WHERE "status" = 'done' AND "processedAt" IS NULL;

COMMIT;

SELECT :users AS users_added,
       :users * :devices_per_user AS devices_added,
       :users * :jumps_per_user AS jumps_added;
