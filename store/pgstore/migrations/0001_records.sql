-- The ledger: one row per (scope, key), and the sequence every fencing
-- token comes from, so tokens of a key increase also across Delete and
-- Sweep. Times are the database's (clock_timestamp()); durations are
-- microseconds.
CREATE SEQUENCE {{schema}}.tokens;

CREATE TABLE {{schema}}.records (
    scope            text COLLATE "C" NOT NULL,
    key              text COLLATE "C" NOT NULL,
    fingerprint      text NOT NULL,
    -- 'deleted' is a tombstone Delete leaves for a while (see doc.go)
    state            text NOT NULL CHECK (state IN ('pending', 'completed', 'released', 'deleted')),
    token            bigint NOT NULL,
    attempts         integer NOT NULL,
    lease_until      timestamptz NOT NULL,
    checkpoint_point text,
    checkpoint_data  bytea,
    outcome_data     bytea,
    outcome_meta     json,
    created          timestamptz NOT NULL,
    completed        timestamptz,
    expires          timestamptz,
    retain_until     timestamptz NOT NULL,
    window_us        bigint NOT NULL,
    retention_us     bigint NOT NULL,
    -- whether the last acquisition took over an expired lease: Begin's
    -- RETURNING cannot see the row it replaced.
    takeover         boolean NOT NULL DEFAULT false,
    PRIMARY KEY (scope, key)
);

-- Sweep walks this index from its oldest end and deletes in batches.
CREATE INDEX records_retain_until ON {{schema}}.records (retain_until);
