-- Documents pushed by hospitals (discharge summaries, referrals), kept durably.
CREATE TABLE pushed_document (
    id TEXT PRIMARY KEY,
    identifier TEXT NOT NULL UNIQUE,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    patient TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    bundle TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
-- Outbox claims: a worker owns a row until claim_until; a crashed worker's claim lapses.
ALTER TABLE outbox ADD COLUMN claim_until BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN delivered_at BIGINT;
