-- The example on-site application schema (what a Prisma app would create), used by the
-- lab, the tests and the benchmark.
--
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/examples/app-schema.sql
--
-- Idempotent: every object is created with IF NOT EXISTS, so a second run changes nothing.
-- It does not migrate an older shape of these tables; drop the database for that.
--
-- Replicated tables: every table of schema public except the two local-only ones,
-- "DeviceFileIndex" and "DeviceCommandQueue" (they describe the devices plugged into
-- the on-site machine and make no sense elsewhere). Logical replication needs a primary
-- key (the replica identity) on every replicated table that receives UPDATE or DELETE,
-- so each one has one.
--
-- Conventions, as Prisma generates them:
--   - quoted camelCase identifiers ("User", "createdAt");
--   - text ids defaulting to gen_random_uuid()::text (built in since PostgreSQL 13), so
--     rows created on either side never collide;
--   - "updatedAt" defaults to now() and is NOT maintained by a trigger: Prisma sets it
--     from the client. A trigger would also fire on the subscriber only if enabled with
--     ENABLE REPLICA/ALWAYS, another reason to keep it out.
--   - foreign keys ON UPDATE CASCADE ON DELETE RESTRICT (Prisma's default for a required
--     relation), SET NULL for optional ones.
--
-- Foreign keys and replication: the apply worker runs with session_replication_role =
-- replica, so foreign-key triggers do not fire for replicated changes. Rows of one
-- transaction arrive in commit order anyway, but a cascade does not run on the
-- subscriber: on the publisher every cascaded row change is itself published, except
-- rows of the local-only tables, which is why "DeviceFileIndex" and
-- "DeviceCommandQueue" can be left with rows pointing at a "Device" deleted on the
-- other side.

-- A second run would print one "already exists, skipping" notice per object.
SET client_min_messages = warning;

CREATE TABLE IF NOT EXISTS "User" (
    "id"        text        NOT NULL DEFAULT gen_random_uuid()::text,
    "email"     text        NOT NULL,
    "name"      text,
    "createdAt" timestamptz NOT NULL DEFAULT now(),
    "updatedAt" timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);
CREATE UNIQUE INDEX IF NOT EXISTS "User_email_key" ON "User" ("email");

CREATE TABLE IF NOT EXISTS "Device" (
    "id"         text        NOT NULL DEFAULT gen_random_uuid()::text,
    "name"       text        NOT NULL,
    "userId"     text        NOT NULL,
    "lastSeenAt" timestamptz,
    "createdAt"  timestamptz NOT NULL DEFAULT now(),
    "updatedAt"  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "Device_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "Device_userId_fkey" FOREIGN KEY ("userId")
        REFERENCES "User" ("id") ON UPDATE CASCADE ON DELETE RESTRICT
);
CREATE INDEX IF NOT EXISTS "Device_userId_idx" ON "Device" ("userId");

-- One skydive recorded by a device; the recording itself is an object in storage.
CREATE TABLE IF NOT EXISTS "JumpLog" (
    "id"           text        NOT NULL DEFAULT gen_random_uuid()::text,
    "userId"       text        NOT NULL,
    "deviceId"     text,
    "jumpNumber"   integer     NOT NULL,
    "altitude"     integer     NOT NULL,             -- exit altitude, metres
    "freefallTime" integer     NOT NULL,             -- seconds
    "storageUrl"   text        NOT NULL,             -- s3://bucket/key of the recording
    "hash"         text        NOT NULL,             -- sha256 of the recording, lowercase hex
    "fileSize"     bigint      NOT NULL,             -- bytes
    "createdAt"    timestamptz NOT NULL DEFAULT now(),
    "updatedAt"    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "JumpLog_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "JumpLog_hash_check" CHECK ("hash" ~ '^[0-9a-f]{64}$'),
    CONSTRAINT "JumpLog_fileSize_check" CHECK ("fileSize" >= 0),
    CONSTRAINT "JumpLog_userId_fkey" FOREIGN KEY ("userId")
        REFERENCES "User" ("id") ON UPDATE CASCADE ON DELETE RESTRICT,
    CONSTRAINT "JumpLog_deviceId_fkey" FOREIGN KEY ("deviceId")
        REFERENCES "Device" ("id") ON UPDATE CASCADE ON DELETE SET NULL
);
-- Not unique on purpose: both sides may number a jump for the same user at once, and a
-- unique index would turn that into an apply conflict that stops replication.
CREATE INDEX IF NOT EXISTS "JumpLog_userId_jumpNumber_idx" ON "JumpLog" ("userId", "jumpNumber");
CREATE INDEX IF NOT EXISTS "JumpLog_deviceId_idx" ON "JumpLog" ("deviceId");
CREATE INDEX IF NOT EXISTS "JumpLog_hash_idx" ON "JumpLog" ("hash");

CREATE TABLE IF NOT EXISTS "Group" (
    "id"          text        NOT NULL DEFAULT gen_random_uuid()::text,
    "name"        text        NOT NULL,
    "description" text,
    "ownerId"     text        NOT NULL,
    "createdAt"   timestamptz NOT NULL DEFAULT now(),
    "updatedAt"   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "Group_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "Group_ownerId_fkey" FOREIGN KEY ("ownerId")
        REFERENCES "User" ("id") ON UPDATE CASCADE ON DELETE RESTRICT
);
CREATE INDEX IF NOT EXISTS "Group_ownerId_idx" ON "Group" ("ownerId");

-- Prisma's @@id([groupId, userId]): a composite primary key is a valid replica identity.
CREATE TABLE IF NOT EXISTS "GroupMember" (
    "groupId"  text        NOT NULL,
    "userId"   text        NOT NULL,
    "role"     text        NOT NULL DEFAULT 'member',
    "joinedAt" timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "GroupMember_pkey" PRIMARY KEY ("groupId", "userId"),
    CONSTRAINT "GroupMember_role_check" CHECK ("role" IN ('owner', 'admin', 'member')),
    CONSTRAINT "GroupMember_groupId_fkey" FOREIGN KEY ("groupId")
        REFERENCES "Group" ("id") ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT "GroupMember_userId_fkey" FOREIGN KEY ("userId")
        REFERENCES "User" ("id") ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS "GroupMember_userId_idx" ON "GroupMember" ("userId");

-- A planned or completed formation jump of several skydivers.
CREATE TABLE IF NOT EXISTS "FormationSkydive" (
    "id"          text        NOT NULL DEFAULT gen_random_uuid()::text,
    "groupId"     text,
    "name"        text        NOT NULL,
    "jumpDate"    timestamptz NOT NULL,
    "altitude"    integer     NOT NULL,              -- exit altitude, metres
    "plannedSize" integer     NOT NULL,              -- number of slots in the formation
    "completed"   boolean     NOT NULL DEFAULT false,
    "createdAt"   timestamptz NOT NULL DEFAULT now(),
    "updatedAt"   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "FormationSkydive_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "FormationSkydive_groupId_fkey" FOREIGN KEY ("groupId")
        REFERENCES "Group" ("id") ON UPDATE CASCADE ON DELETE SET NULL
);
CREATE INDEX IF NOT EXISTS "FormationSkydive_groupId_idx" ON "FormationSkydive" ("groupId");

CREATE TABLE IF NOT EXISTS "FormationParticipant" (
    "id"          text        NOT NULL DEFAULT gen_random_uuid()::text,
    "formationId" text        NOT NULL,
    "userId"      text        NOT NULL,
    "jumpLogId"   text,                              -- the participant's recording, once uploaded
    "slot"        integer     NOT NULL,              -- position in the formation, 1-based
    "createdAt"   timestamptz NOT NULL DEFAULT now(),
    "updatedAt"   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "FormationParticipant_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "FormationParticipant_formationId_fkey" FOREIGN KEY ("formationId")
        REFERENCES "FormationSkydive" ("id") ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT "FormationParticipant_userId_fkey" FOREIGN KEY ("userId")
        REFERENCES "User" ("id") ON UPDATE CASCADE ON DELETE RESTRICT,
    CONSTRAINT "FormationParticipant_jumpLogId_fkey" FOREIGN KEY ("jumpLogId")
        REFERENCES "JumpLog" ("id") ON UPDATE CASCADE ON DELETE SET NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS "FormationParticipant_formationId_userId_key"
    ON "FormationParticipant" ("formationId", "userId");
CREATE INDEX IF NOT EXISTS "FormationParticipant_userId_idx" ON "FormationParticipant" ("userId");

-- Local-only: files found on the devices attached to this machine. Not published.
CREATE TABLE IF NOT EXISTS "DeviceFileIndex" (
    "id"         text        NOT NULL DEFAULT gen_random_uuid()::text,
    "deviceId"   text        NOT NULL,
    "path"       text        NOT NULL,               -- path on the device
    "fileSize"   bigint      NOT NULL,
    "hash"       text,                               -- sha256 hex, once computed
    "modifiedAt" timestamptz NOT NULL,
    "jumpLogId"  text,                               -- set once imported as a jump
    "indexedAt"  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "DeviceFileIndex_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "DeviceFileIndex_deviceId_fkey" FOREIGN KEY ("deviceId")
        REFERENCES "Device" ("id") ON UPDATE CASCADE ON DELETE CASCADE,
    CONSTRAINT "DeviceFileIndex_jumpLogId_fkey" FOREIGN KEY ("jumpLogId")
        REFERENCES "JumpLog" ("id") ON UPDATE CASCADE ON DELETE SET NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS "DeviceFileIndex_deviceId_path_key"
    ON "DeviceFileIndex" ("deviceId", "path");

-- Local-only: commands waiting to be sent to an attached device. Not published.
CREATE TABLE IF NOT EXISTS "DeviceCommandQueue" (
    "id"          text        NOT NULL DEFAULT gen_random_uuid()::text,
    "deviceId"    text        NOT NULL,
    "command"     text        NOT NULL,
    "payload"     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    "status"      text        NOT NULL DEFAULT 'pending',
    "createdAt"   timestamptz NOT NULL DEFAULT now(),
    "processedAt" timestamptz,
    CONSTRAINT "DeviceCommandQueue_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "DeviceCommandQueue_status_check"
        CHECK ("status" IN ('pending', 'sent', 'done', 'failed')),
    CONSTRAINT "DeviceCommandQueue_deviceId_fkey" FOREIGN KEY ("deviceId")
        REFERENCES "Device" ("id") ON UPDATE CASCADE ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS "DeviceCommandQueue_deviceId_status_idx"
    ON "DeviceCommandQueue" ("deviceId", "status");
