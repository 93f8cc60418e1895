-- The applied bitmap (issue 17): batches.done holds one bit per record
-- index (bit i is get_bit(done, i): byte i / 8, bit i % 8 from the least
-- significant; at most 63 bytes for 500 records). The sink sets a record's
-- bit in the transaction that records its outcome, with its membership
-- change and counters, under the batch row's lock (SELECT … FOR UPDATE in
-- batch id order, then the counters UPDATE writes done): a record whose bit
-- is set is a duplicate. The bitmap is the one authority for "this record
-- already had its outcome"; processed always equals bit_count(done).
--
-- batch_records keeps a row only for the records that did not apply
-- (a reason: NOT_FOUND, AMBIGUOUS, INVALID, FAILED, GROUP_LIMIT,
-- TIMED_OUT, …): the failures page, errorCounts and deferred matching read
-- them. A MATCHED record writes no row any more.
--
-- Upgrade: for every batch still PROCESSING the bitmap is derived from its
-- ledger rows (every record with an outcome had one), so a record
-- redelivered after the upgrade stays a duplicate. Finished batches need no
-- bitmap (the sink decides their records are duplicates from their
-- status) and PENDING ones have no outcome yet. The MATCHED rows already
-- written are kept: nothing reads them, and pruning deletes them with their
-- batch after --result-retention (deleting them here would rewrite the
-- largest table in the upgrade's one transaction). Stop every sink of the
-- previous version before this migration runs: one still running would
-- skip records by the ledger alone and set no bit (docs/operations.md).
--
-- Measured (docs/performance.md, "Applied bitmap"; before and after run
-- alternately, medians): sink BenchmarkApply, 1 tenant, chunks of 2,000,
-- -benchtime 30x: 31.2 ms per chunk and 12.25 µs of PostgreSQL CPU per
-- record before, 21.3 ms and 8.00 µs after (8 tenants, chunks of 5,000:
-- 85.7 ms, 12.86 µs before; 60.3 ms, 8.67 µs after); -benchtime 3x, all
-- sizes: −7 % to −35 % per chunk. End to end (groupmatch bench --single
-- --customers 200000 --records 400000 --baseline, 3 runs each): 34,622
-- records/s, pipeline/baseline 0.436, PostgreSQL 25.2 µs per record before;
-- 40,162 records/s, 0.498, 20.5 µs after.
--
-- One DO block (see 0007): on Citus each statement is its own string, the
-- ALTER TABLE propagates to the shards, and each per-batch statement names
-- its tenant (a router query).
DO $$
DECLARE
    b record;
    bits bytea;
    i integer;
BEGIN
    ALTER TABLE batches ADD COLUMN IF NOT EXISTS done bytea NOT NULL DEFAULT '\x';
    FOR b IN SELECT /* all tenants */ tenant_id, batch_id, total FROM batches
             WHERE status = 'PROCESSING' AND done = '\x' ORDER BY tenant_id, batch_id LOOP
        bits := decode(repeat('00', (b.total + 7) / 8), 'hex');
        FOR i IN SELECT rec_index FROM batch_records
                 WHERE tenant_id = b.tenant_id AND batch_id = b.batch_id AND rec_index < b.total LOOP
            bits := set_bit(bits, i, 1);
        END LOOP;
        UPDATE batches SET done = bits WHERE tenant_id = b.tenant_id AND batch_id = b.batch_id;
    END LOOP;
END
$$;
