-- Owners' decisions that two Patient records are (linked = 1) or are not (linked = 0)
-- the same person; the latest row per pair is in force, earlier rows are history.
CREATE TABLE patient_link (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_a TEXT NOT NULL,
    patient_b TEXT NOT NULL,
    linked BIGINT NOT NULL,
    institution TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    decided_at BIGINT NOT NULL
);
CREATE INDEX patient_link_pair ON patient_link (patient_a, patient_b);
