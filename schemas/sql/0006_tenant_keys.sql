-- Every tenant table is keyed by tenant first (SPEC §12), so that the same
-- schema runs on one PostgreSQL and, distributed by tenant_id, on Citus:
--
--   * batch_records, memberships and batch_events_outbox gain tenant_id,
--     backfilled from their batch or group;
--   * primary keys become batches (tenant_id, batch_id), groups (tenant_id,
--     group_id), batch_records (tenant_id, batch_id, rec_index),
--     memberships (tenant_id, group_id, customer_id), batch_events_outbox
--     (tenant_id, batch_id); every unique index leads with tenant_id;
--   * where the citus extension is installed (only there), the eight
--     tenant tables are distributed by tenant_id in one co-location group
--     and tenants, applications and app_tokens become reference tables.
--
-- Upgrading in place: the runner applies this file in one transaction. The
-- backfill UPDATEs rewrite batch_records and memberships once and the key
-- changes rebuild their indexes, under an exclusive lock: on a large
-- database plan minutes of downtime (docs/operations.md, "Schema keys and
-- Citus"). Ledger rows whose batch and memberships whose group no longer
-- exist cannot name a tenant; nothing reads them, and they are deleted.

ALTER TABLE batch_records ADD COLUMN IF NOT EXISTS tenant_id bigint;
UPDATE batch_records r SET tenant_id = b.tenant_id
FROM batches b WHERE b.batch_id = r.batch_id AND r.tenant_id IS NULL;
DELETE FROM batch_records WHERE tenant_id IS NULL;
ALTER TABLE batch_records ALTER COLUMN tenant_id SET NOT NULL;

ALTER TABLE memberships ADD COLUMN IF NOT EXISTS tenant_id bigint;
UPDATE memberships m SET tenant_id = g.tenant_id
FROM groups g WHERE g.group_id = m.group_id AND m.tenant_id IS NULL;
DELETE FROM memberships WHERE tenant_id IS NULL;
ALTER TABLE memberships ALTER COLUMN tenant_id SET NOT NULL;

ALTER TABLE batch_events_outbox ADD COLUMN IF NOT EXISTS tenant_id bigint;
UPDATE batch_events_outbox o SET tenant_id = b.tenant_id
FROM batches b WHERE b.batch_id = o.batch_id AND o.tenant_id IS NULL;
DELETE FROM batch_events_outbox WHERE tenant_id IS NULL;
ALTER TABLE batch_events_outbox ALTER COLUMN tenant_id SET NOT NULL;

ALTER TABLE batches DROP CONSTRAINT IF EXISTS batches_pkey;
ALTER TABLE batches ADD CONSTRAINT batches_pkey PRIMARY KEY (tenant_id, batch_id);
-- The primary key is this index now.
DROP INDEX IF EXISTS batches_tenant;

ALTER TABLE groups DROP CONSTRAINT IF EXISTS groups_pkey;
ALTER TABLE groups ADD CONSTRAINT groups_pkey PRIMARY KEY (tenant_id, group_id);

ALTER TABLE batch_records DROP CONSTRAINT IF EXISTS batch_records_pkey;
ALTER TABLE batch_records ADD CONSTRAINT batch_records_pkey PRIMARY KEY (tenant_id, batch_id, rec_index);
DROP INDEX IF EXISTS batch_records_failures;
CREATE INDEX batch_records_failures ON batch_records (tenant_id, batch_id, rec_index) WHERE reason IS NOT NULL;

ALTER TABLE memberships DROP CONSTRAINT IF EXISTS memberships_pkey;
ALTER TABLE memberships ADD CONSTRAINT memberships_pkey PRIMARY KEY (tenant_id, group_id, customer_id);

ALTER TABLE batch_events_outbox DROP CONSTRAINT IF EXISTS batch_events_outbox_pkey;
ALTER TABLE batch_events_outbox ADD CONSTRAINT batch_events_outbox_pkey PRIMARY KEY (tenant_id, batch_id);
-- The relay reads the oldest rows of every tenant without locks.
CREATE INDEX IF NOT EXISTS batch_events_outbox_order ON batch_events_outbox (batch_id);

-- Citus only. The runner's transaction holds the schema changes above; the
-- distribution calls run in it too, sequentially (one connection per
-- worker), which Citus requires when a transaction also creates reference
-- tables with foreign keys and copies existing rows. Sequences
-- (batch_id_seq, customer_created_id_seq) and the identity columns stay on
-- the coordinator: statements calling nextval must run there (docs/operations.md).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'tenants'::regclass) THEN
        PERFORM create_reference_table('tenants');
        PERFORM create_reference_table('applications');
        PERFORM create_reference_table('app_tokens');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'customers'::regclass) THEN
        PERFORM create_distributed_table('customers', 'tenant_id');
        PERFORM create_distributed_table('customer_phones', 'tenant_id', colocate_with => 'customers');
        PERFORM create_distributed_table('customer_openids', 'tenant_id', colocate_with => 'customers');
        PERFORM create_distributed_table('batches', 'tenant_id', colocate_with => 'customers');
        PERFORM create_distributed_table('batch_records', 'tenant_id', colocate_with => 'customers');
        PERFORM create_distributed_table('groups', 'tenant_id', colocate_with => 'customers');
        PERFORM create_distributed_table('memberships', 'tenant_id', colocate_with => 'customers');
        PERFORM create_distributed_table('batch_events_outbox', 'tenant_id', colocate_with => 'customers');
    END IF;
END
$$;
