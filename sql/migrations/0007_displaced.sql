-- An incarnation of a key that cloud replaced by main's version of another incarnation
-- (main_authoritative and manual tables; issue 7, docs/conflicts.md "Deletes"). Cloud had
-- deleted the key and created it again; main's update or insert of an incarnation it still
-- held then won over cloud's. If main's delete of that incarnation arrives later, made
-- before main saw cloud's (which main then kept), cloud's row comes back from here.
-- One per key: the last replacement. Garbage-collected with the tombstones.
CREATE TABLE duplex.displaced (
    rel          text        NOT NULL,
    key          text        NOT NULL,
    by_inc       text        NOT NULL,      -- main's incarnation that took the key
    inc          text        NOT NULL,      -- cloud's incarnation it replaced
    seen         text[],                    -- that incarnation's seen list
    "row"        jsonb       NOT NULL,      -- its last version
    displaced_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rel, key)
);
CREATE INDEX displaced_at ON duplex.displaced (displaced_at);
