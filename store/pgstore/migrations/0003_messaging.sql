-- The transactional outbox (outbox.go): messages enqueued inside a
-- caller's transaction, published by one relay at a time in seq order per
-- entity. outbox_entities hands out each entity's seq: Enqueue's upsert
-- locks the entity's row until the caller's transaction ends, so the seqs
-- of an entity are committed (and become visible to the relay) in order.
CREATE TABLE {{schema}}.outbox_entities (
    entity   text COLLATE "C" PRIMARY KEY,
    last_seq bigint NOT NULL
);

CREATE TABLE {{schema}}.outbox (
    id              bigserial PRIMARY KEY,
    entity          text COLLATE "C" NOT NULL,
    seq             bigint NOT NULL,
    subject         text NOT NULL,
    -- the broker's dedup id; one row per id
    message_id      text COLLATE "C" NOT NULL UNIQUE,
    payload         bytea NOT NULL,
    headers         jsonb,
    created         timestamptz NOT NULL DEFAULT statement_timestamp(),
    -- NULL until the relay saw the broker accept the message
    sent_at         timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    -- after a failed publish: not before then (the relay's clock)
    next_attempt_at timestamptz,
    last_error      text,
    UNIQUE (entity, seq)
);

-- The relay's reads: the unsent rows in id order, and those waiting out a
-- backoff (which hold back the later rows of their entity).
CREATE INDEX outbox_unsent ON {{schema}}.outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_backoff ON {{schema}}.outbox (next_attempt_at) WHERE sent_at IS NULL AND next_attempt_at IS NOT NULL;
-- The relay's pruning of rows sent longer ago than RelayConfig.Retention.
CREATE INDEX outbox_sent ON {{schema}}.outbox (sent_at) WHERE sent_at IS NOT NULL;
