-- Gateway metadata; later migrations add audit, grants and outbox tables.
CREATE TABLE IF NOT EXISTS kk_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
