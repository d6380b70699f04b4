-- Workflow instances (workflow.Journal, journal.go): one row per instance,
-- its fields as JSON in body and, beside it, the columns List filters on.
-- Times the filters compare are Unix nanoseconds (bigint), exact where
-- timestamptz would round to microseconds; wake_ns is NULL when the
-- instance has no WakeAt. entries is the length of its history.
CREATE TABLE {{schema}}.wf_instances (
    id          text COLLATE "C" PRIMARY KEY,
    type        text COLLATE "C" NOT NULL,
    state       text COLLATE "C" NOT NULL,
    status      text NOT NULL,
    fingerprint text NOT NULL,
    seq         bigint NOT NULL,
    entries     bigint NOT NULL,
    wake_ns     bigint,
    finished_ns bigint NOT NULL,
    body        jsonb NOT NULL
);

-- Every engine Step lists the instances due by now.
CREATE INDEX wf_instances_wake ON {{schema}}.wf_instances (wake_ns) WHERE wake_ns IS NOT NULL;
CREATE INDEX wf_instances_type_state ON {{schema}}.wf_instances (type, state, id);
CREATE INDEX wf_instances_status ON {{schema}}.wf_instances (status, id);

-- The append-only history of each instance, numbered from 1.
CREATE TABLE {{schema}}.wf_history (
    id   text COLLATE "C" NOT NULL REFERENCES {{schema}}.wf_instances (id) ON DELETE CASCADE,
    seq  bigint NOT NULL,
    kind text NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (id, seq)
);
