-- The audit log: one row per AuditEvent, hash-chained by seq.
CREATE TABLE audit_event (
    seq BIGINT PRIMARY KEY,
    recorded BIGINT NOT NULL,
    agent_institution TEXT NOT NULL,
    owners TEXT NOT NULL,
    patients TEXT NOT NULL,
    outcome TEXT NOT NULL,
    subtype TEXT NOT NULL,
    cross_site BIGINT NOT NULL,
    event TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL
);
CREATE INDEX audit_event_recorded ON audit_event (recorded);
CREATE INDEX audit_event_agent ON audit_event (agent_institution, recorded);
-- Signed checkpoints over the chain head.
CREATE TABLE audit_checkpoint (
    seq BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL,
    signed_at BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    signature BYTEA NOT NULL
);
