-- Emails of customers (identity kind "email"): like customer_phones, any
-- number per customer, each bound through an application or none
-- (app_type/app_id '' then). Values are stored in canonical form (trimmed,
-- lower case; identity.NormalizeEmail) and compare byte by byte (collation
-- "C", see 0005); the primary key serves the matcher's look-up
-- (tenant_id, email = ANY(...)) as an index-only scan.
--
-- One DO block (see 0007). On Citus the table is distributed by tenant_id,
-- colocated with customers, like every directory table.
DO $$
BEGIN
    CREATE TABLE IF NOT EXISTS customer_emails (
        tenant_id   bigint NOT NULL,
        email       text COLLATE "C" NOT NULL,
        customer_id bigint NOT NULL,
        app_type    text NOT NULL DEFAULT '',
        app_id      text NOT NULL DEFAULT '',
        PRIMARY KEY (tenant_id, email, customer_id, app_type, app_id)
    );
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    -- Only with Citus: a separate statement, planned only when reached.
    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'customer_emails'::regclass) THEN
        PERFORM create_distributed_table('customer_emails', 'tenant_id', colocate_with => 'customers');
    END IF;
END
$$;
