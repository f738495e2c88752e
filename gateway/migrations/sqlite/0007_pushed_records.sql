-- The records of each pushed document, served from here: held in memory, every
-- document stayed there for the life of the process (about 100 KB per 50 KB document),
-- and every push rebuilt a snapshot that held them all.
CREATE TABLE pushed_record (
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    document TEXT NOT NULL,
    entry_index INTEGER NOT NULL,
    received_at BIGINT NOT NULL,
    owner TEXT NOT NULL,
    patient TEXT,
    body TEXT NOT NULL,
    PRIMARY KEY (rtype, id)
);
CREATE INDEX pushed_record_patient ON pushed_record (patient, rtype);
CREATE INDEX pushed_record_document ON pushed_record (document);
-- The periodic look for other instances' pushes reads only these two columns: without
-- the index it read every stored document, bundle and all, every two seconds.
CREATE INDEX pushed_document_received ON pushed_document (received_at, id);
