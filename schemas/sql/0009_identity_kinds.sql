-- Identity kinds as data (issue 15): the four per-kind counters of a batch
-- (matched_unionid, matched_openid, matched_phone, matched_id) become one
-- integer array, matched_by, indexed by kind ordinal (pipeline.IdentityKinds,
-- 1-based here: unionid, openid, phone, id, ...). A kind added later needs
-- no column: an element a row lacks reads as 0 (the sink's UPDATE and
-- batches.Read both say so). The existing counters are copied in place.
--
-- Why an array rather than a jsonb object or a row per (batch, kind): the
-- sink adds every chunk's increments in one set-based UPDATE of batches;
-- an array keeps that one UPDATE with one column, where jsonb would rebuild
-- an object per row and a table would add a statement and a row lock per
-- (batch, kind). Measured (sink BenchmarkApply, 1 tenant, -benchtime 30x,
-- median of 3, PostgreSQL µs per record; docs/performance.md): chunks of
-- 1,000 records 12.67 with the four columns, 12.00 with the array (5
-- kinds); chunks of 5,000 11.60 and 11.00: no cost within the noise. The
-- jsonb and row-per-kind designs were not measured.
--
-- One DO block (see 0007): on Citus each statement is its own string, and
-- ALTER TABLE of the distributed batches propagates to its shards.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'batches' AND column_name = 'matched_unionid') THEN
        ALTER TABLE batches ADD COLUMN IF NOT EXISTS matched_by integer[] NOT NULL DEFAULT '{}';
        UPDATE batches SET matched_by = ARRAY[matched_unionid, matched_openid, matched_phone, matched_id]
            WHERE matched_unionid <> 0 OR matched_openid <> 0 OR matched_phone <> 0 OR matched_id <> 0;
        ALTER TABLE batches DROP COLUMN matched_unionid, DROP COLUMN matched_openid,
            DROP COLUMN matched_phone, DROP COLUMN matched_id;
    END IF;
END
$$;
