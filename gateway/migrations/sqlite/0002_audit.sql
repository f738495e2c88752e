-- The audit log: one row per AuditEvent, hash-chained by seq.
CREATE TABLE audit_event (
    seq INTEGER PRIMARY KEY,
    recorded BIGINT NOT NULL,
    agent_institution TEXT NOT NULL,
    owners TEXT NOT NULL,
    patients TEXT NOT NULL,
    outcome TEXT NOT NULL,
    subtype TEXT NOT NULL,
    cross_site BIGINT NOT NULL,
    event TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX audit_event_recorded ON audit_event (recorded);
CREATE INDEX audit_event_agent ON audit_event (agent_institution, recorded);
-- Signed checkpoints over the chain head.
CREATE TABLE audit_checkpoint (
    seq INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    signed_at BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    signature BLOB NOT NULL
);
