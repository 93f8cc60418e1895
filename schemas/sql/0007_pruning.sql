-- Indexes for pruning (sink.Pruner, SPEC §12 "Bounded growth"), so that a
-- pass reads only what it deletes, however many rows are kept:
--
--   * batches_finished: a tenant's finished batches oldest first (expired
--     batches, and the age of the oldest one kept for
--     groupmatch_prune_overdue_seconds). Finishing a batch already changes
--     status, which partial indexes name, so this adds no non-HOT update.
--   * memberships_tombstones: a tenant's delete tombstones by the batch that
--     set them, for "tombstones below the tenant's floor". Only tombstones
--     have entries; a membership update that changes batch_id is no longer
--     a HOT update. BenchmarkApply (1 tenant, chunks of 2,000), median of
--     3 on a loaded 2-core machine: 15.0 PostgreSQL µs/record with the
--     index, 14.4 without, within the runs' spread (14.3-15.7).
--
-- Plain CREATE INDEX (migrations run in one transaction): it blocks writes
-- to the table while it builds, seconds per million rows.
--
-- One DO block, not two top-level statements: on Citus the tables are
-- distributed by now, and Citus sends a DDL statement's whole query string
-- to the shards, which refuse two commands in one ("cannot insert multiple
-- commands into a prepared statement", citus#6608). Inside the block each
-- statement is its own string.
DO $$
BEGIN
    CREATE INDEX IF NOT EXISTS batches_finished ON batches (tenant_id, finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX IF NOT EXISTS memberships_tombstones ON memberships (tenant_id, batch_id) WHERE NOT present;
END
$$;
