-- Identity values (thirdIds, unionids, phones, openids) are opaque
-- identifiers: nothing sorts them for people, so they compare byte by byte
-- (collation "C"). Every index probe of the matcher's look-ups compares
-- them, and "C" compares with memcmp where the database's default collation
-- calls the C library's strcoll. Parameters and staging columns of the
-- default collation take the columns' "C" in comparisons, so no query
-- changes. Changing a column's collation rebuilds the indexes on it (the
-- table is not rewritten); on a large directory this takes minutes under an
-- exclusive lock: see docs/operations.md, "Upgrades".
ALTER TABLE customers
    ALTER COLUMN third_id TYPE text COLLATE "C",
    ALTER COLUMN unionid TYPE text COLLATE "C";
ALTER TABLE customer_phones ALTER COLUMN phone TYPE text COLLATE "C";
ALTER TABLE customer_openids ALTER COLUMN openid TYPE text COLLATE "C";

-- The thirdId and unionid indexes carry every column a look-up returns, so
-- look-ups are index-only scans and never visit the customers heap (the
-- phone and openid primary keys already hold all their columns).
DROP INDEX customers_third_id;
CREATE INDEX customers_third_id ON customers (tenant_id, third_id) INCLUDE (customer_id)
    WHERE third_id IS NOT NULL;
DROP INDEX customers_unionid;
CREATE INDEX customers_unionid ON customers (tenant_id, unionid)
    INCLUDE (customer_id, unionid_app_type, unionid_app_id) WHERE unionid IS NOT NULL;
