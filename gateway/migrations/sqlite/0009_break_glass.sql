-- Break-glass declarations: one reader (institution and terminal) reading one person
-- without a grant, for a limited time; a row per owner crossed and its patient record
-- (the person's records at several sites). Each owner's notice is written to the
-- outbox in the same transaction as its row.
CREATE TABLE break_glass (
    id TEXT PRIMARY KEY,
    reader_institution TEXT NOT NULL,
    reader_terminal TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    owner TEXT NOT NULL,
    patient TEXT NOT NULL,
    person TEXT NOT NULL,
    reason TEXT NOT NULL,
    opened_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX break_glass_reader ON break_glass (reader_institution, reader_terminal, expires_at);
CREATE INDEX outbox_kind_destination ON outbox (kind, destination, id);
