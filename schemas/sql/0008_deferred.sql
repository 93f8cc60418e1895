-- Deferred matching (SPEC §13): records that name nobody yet are kept as
-- pending bindings and applied when the directory learns their customer.
--
--   * tenants.defer_unmatched: the tenant's default for
--     publicParams.deferUnmatched (off: the platform's documented
--     behaviour).
--   * batches.deferred / late_matched: records kept pending, and pending
--     records resolved since. The first counters (success, unmatched, ...)
--     never change after a batch finishes.
--   * batch_records.deferral: NULL for a final record; PENDING while its
--     binding waits, LATE_MATCHED once applied late (exactly once: the sink
--     moves PENDING to LATE_MATCHED in the transaction that applies it),
--     EXPIRED when --defer-ttl passed first.
--   * pending_bindings: one per pending record, by position; pending is
--     pipeline.Pending as JSON (normalised identities, priority order,
--     application filter, groups). announced is false until the sink's
--     relay has published the binding's recheck messages (an outbox on the
--     table itself).
--   * pending_identities: the bindings by identity, for the re-matcher's
--     look-up of "who waits for this value".
--   * batch_updates_outbox: batch.updated events waiting for the relay, at
--     most one row per batch (the relay reads the batch's counters when it
--     publishes, so late matches landing before then make one event). A
--     table of its own rather than a kind column on batch_events_outbox,
--     whose one row per batch means "batch.finished, exactly once": a
--     batch may then have both rows, and neither waits for the other.
--
-- One DO block (see 0007): on Citus each statement is its own string.
DO $$
BEGIN
    ALTER TABLE tenants ADD COLUMN IF NOT EXISTS defer_unmatched boolean NOT NULL DEFAULT false;
    ALTER TABLE batches ADD COLUMN IF NOT EXISTS deferred integer NOT NULL DEFAULT 0;
    ALTER TABLE batches ADD COLUMN IF NOT EXISTS late_matched integer NOT NULL DEFAULT 0;
    ALTER TABLE batch_records ADD COLUMN IF NOT EXISTS deferral text
        CHECK (deferral IN ('PENDING', 'LATE_MATCHED', 'EXPIRED'));
    CREATE TABLE IF NOT EXISTS pending_bindings (
        tenant_id  bigint NOT NULL,
        batch_id   bigint NOT NULL,
        rec_index  integer NOT NULL,
        opt_type   text NOT NULL,
        pending    jsonb NOT NULL,
        expires_at timestamptz NOT NULL,
        announced  boolean NOT NULL DEFAULT false,
        PRIMARY KEY (tenant_id, batch_id, rec_index)
    );
    CREATE INDEX IF NOT EXISTS pending_bindings_expiry ON pending_bindings (tenant_id, expires_at);
    CREATE INDEX IF NOT EXISTS pending_bindings_unannounced ON pending_bindings (tenant_id, batch_id, rec_index) WHERE NOT announced;
    CREATE TABLE IF NOT EXISTS pending_identities (
        tenant_id bigint NOT NULL,
        kind      text NOT NULL,
        value     text NOT NULL,
        batch_id  bigint NOT NULL,
        rec_index integer NOT NULL,
        PRIMARY KEY (tenant_id, kind, value, batch_id, rec_index)
    );
    CREATE INDEX IF NOT EXISTS pending_identities_binding ON pending_identities (tenant_id, batch_id, rec_index);
    CREATE TABLE IF NOT EXISTS batch_updates_outbox (
        tenant_id  bigint NOT NULL,
        batch_id   bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant_id, batch_id)
    );
    CREATE INDEX IF NOT EXISTS batch_updates_outbox_order ON batch_updates_outbox (batch_id);
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- Only with Citus: a separate statement, planned only when reached.
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'pending_bindings'::regclass) THEN
        PERFORM create_distributed_table('pending_bindings', 'tenant_id', colocate_with => 'customers');
        PERFORM create_distributed_table('pending_identities', 'tenant_id', colocate_with => 'customers');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'batch_updates_outbox'::regclass) THEN
        PERFORM create_distributed_table('batch_updates_outbox', 'tenant_id', colocate_with => 'customers');
    END IF;
END
$$;
