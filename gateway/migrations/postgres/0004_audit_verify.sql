-- References of every entity of an event (",Patient/x,Observation/y,"), for auditor queries.
ALTER TABLE audit_event ADD COLUMN entities TEXT NOT NULL DEFAULT '';
-- After pruning, the signed checkpoint the remaining chain starts from.
CREATE TABLE audit_anchor (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    signed_at BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    signature BYTEA NOT NULL
);
