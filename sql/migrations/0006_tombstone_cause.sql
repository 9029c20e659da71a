-- Why an incarnation is dead (issue 7, docs/conflicts.md "Deletes"). A tombstone written
-- by a delete of that very incarnation has cause NULL. An incarnation that died because a
-- different incarnation of its key was deleted (an insert that arrived after a delete it
-- had not seen, or a row the peer's concurrent delete of another incarnation removed)
-- names that deleted incarnation here. An insert made after seeing the cause's delete has
-- seen this death too: it is not a write that missed a delete.
ALTER TABLE duplex.tombstone ADD COLUMN cause text;
