-- batch.finished events waiting to be published: a transactional outbox.
-- The sink inserts a batch's row in the transaction that finishes the batch
-- (so there is exactly one per batch); the relay publishes and deletes it.
CREATE TABLE batch_events_outbox (
    batch_id   bigint PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
