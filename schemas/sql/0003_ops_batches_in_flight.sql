-- Batches in flight, for the groupmatch_batches_in_flight gauge that sink
-- processes read at every scrape: counting the PROCESSING batches and
-- finding the oldest reads only this index, whatever the number of
-- finished batches. (A plain CREATE INDEX: migrations run in a
-- transaction; it blocks writes to batches while it builds, which takes
-- seconds even for millions of batches.)
CREATE INDEX batches_processing ON batches (accepted_at) WHERE status = 'PROCESSING';
