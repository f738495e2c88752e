-- Grants an owner institution makes across its boundary (consent, referral,
-- on-call delegation, pharmacy designation), each a FHIR Consent; revocation keeps the row.
CREATE TABLE policy_grant (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    patient TEXT NOT NULL,
    grantees TEXT NOT NULL,
    resource_types TEXT NOT NULL,
    valid_from BIGINT NOT NULL,
    valid_to BIGINT NOT NULL,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    resource TEXT NOT NULL
);
CREATE INDEX policy_grant_owner ON policy_grant (owner, kind, patient);
-- Events to deliver to institutions (break-glass notices, pushed documents).
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    destination TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX outbox_due ON outbox (state, next_attempt);
