-- groupmatch schema, version 1.
-- Hot tables (customers and identities, memberships, batch_records) carry no
-- foreign keys: every write to them is set-based and checked by the code that
-- issues it, and FK checks would double the cost of each row.

CREATE TABLE tenants (
    tenant_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A self-built application (自建应用). Secrets are stored as SHA-256 hashes.
CREATE TABLE applications (
    appid       text PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenants,
    name        text NOT NULL,
    secret_hash bytea NOT NULL,
    scopes      text[] NOT NULL,
    disabled_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Access and refresh tokens, by SHA-256 hash only.
CREATE TABLE app_tokens (
    token_hash bytea PRIMARY KEY,
    appid      text NOT NULL REFERENCES applications ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('access', 'refresh')),
    expires_at timestamptz NOT NULL
);
CREATE INDEX app_tokens_expires ON app_tokens (expires_at);

-- The platform's customer directory. (tenant_id, customer_id) names a
-- customer. Ids loaded by `directory load` are below 2^52; customers created
-- by isMatching=false imports take ids from customer_created_id_seq, in
-- [2^52, 2^53), so the two never collide.
CREATE TABLE customers (
    tenant_id        bigint NOT NULL,
    customer_id      bigint NOT NULL,
    third_id         text,
    unionid          text,
    unionid_app_type text NOT NULL DEFAULT '',
    unionid_app_id   text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, customer_id)
);
CREATE INDEX customers_third_id ON customers (tenant_id, third_id) WHERE third_id IS NOT NULL;
CREATE INDEX customers_unionid ON customers (tenant_id, unionid) WHERE unionid IS NOT NULL;
CREATE SEQUENCE customer_created_id_seq START 4503599627370496 MINVALUE 4503599627370496 MAXVALUE 9007199254740991;

-- Phones of customers; app_type/app_id name the application a phone was
-- bound through ('' when none).
CREATE TABLE customer_phones (
    tenant_id   bigint NOT NULL,
    phone       text NOT NULL,
    customer_id bigint NOT NULL,
    app_type    text NOT NULL DEFAULT '',
    app_id      text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, phone, customer_id, app_type, app_id)
);

-- App-scoped openids: an openid means something only with its application.
CREATE TABLE customer_openids (
    tenant_id   bigint NOT NULL,
    openid      text NOT NULL,
    app_type    text NOT NULL,
    app_id      text NOT NULL,
    customer_id bigint NOT NULL,
    PRIMARY KEY (tenant_id, openid, app_type, app_id, customer_id)
);

-- Batch ids are allocated in acceptance order, below 2^53.
CREATE SEQUENCE batch_id_seq MAXVALUE 9007199254740991;

-- One row per batchAdd request. status: PENDING (records being written to
-- Kafka; the caller has no id yet), PROCESSING, SUCCESS, PARTIAL_SUCCESS,
-- FAILED. A PENDING batch whose acceptance failed becomes FAILED with
-- aborted = true and its records are never applied.
CREATE TABLE batches (
    batch_id        bigint PRIMARY KEY,
    tenant_id       bigint NOT NULL,
    appid           text NOT NULL,
    opt_type        text NOT NULL,
    params          jsonb NOT NULL,
    status          text NOT NULL,
    aborted         boolean NOT NULL DEFAULT false,
    total           integer NOT NULL,
    processed       integer NOT NULL DEFAULT 0,
    success         integer NOT NULL DEFAULT 0,
    unmatched       integer NOT NULL DEFAULT 0,
    ambiguous       integer NOT NULL DEFAULT 0,
    invalid         integer NOT NULL DEFAULT 0,
    failed          integer NOT NULL DEFAULT 0,
    matched_unionid integer NOT NULL DEFAULT 0,
    matched_openid  integer NOT NULL DEFAULT 0,
    matched_phone   integer NOT NULL DEFAULT 0,
    matched_id      integer NOT NULL DEFAULT 0,
    groups_created  integer NOT NULL DEFAULT 0,
    conflicts       integer NOT NULL DEFAULT 0,
    idempotency_key text,
    request_hash    bytea,
    accepted_at     timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    CHECK (processed = success + unmatched + ambiguous + invalid + failed),
    CHECK (processed <= total)
);
CREATE INDEX batches_tenant ON batches (tenant_id, batch_id);
CREATE INDEX batches_pending ON batches (accepted_at) WHERE status = 'PENDING';
CREATE UNIQUE INDEX batches_idempotency ON batches (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The per-record ledger: one row per (batch, record index), written in the
-- same transaction as the record's membership change and its batch's
-- counters, so redelivered records change nothing. Rows of records that were
-- not applied keep the reason and masked identifiers for the result page.
CREATE TABLE batch_records (
    batch_id    bigint NOT NULL,
    rec_index   integer NOT NULL,
    outcome     text NOT NULL,
    reason      text,
    matched_by  text,
    customer_id bigint,
    ref         jsonb,
    PRIMARY KEY (batch_id, rec_index)
);
CREATE INDEX batch_records_failures ON batch_records (batch_id, rec_index) WHERE reason IS NOT NULL;

-- Groups. A group named only by deletes exists invisibly (visible = false)
-- so that its membership tombstones keep their order; it shows once an add
-- names it.
CREATE TABLE groups (
    group_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  bigint NOT NULL,
    name       text NOT NULL,
    category   text NOT NULL DEFAULT '未分类',
    visible    boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

-- Memberships with the position (batch_id, rec_index) of the change that
-- set them. present = false is a tombstone left by a delete, so a late,
-- older add cannot resurrect the member. Reads never show tombstones.
CREATE TABLE memberships (
    group_id    bigint NOT NULL,
    customer_id bigint NOT NULL,
    present     boolean NOT NULL,
    batch_id    bigint NOT NULL,
    rec_index   integer NOT NULL,
    PRIMARY KEY (group_id, customer_id)
);
