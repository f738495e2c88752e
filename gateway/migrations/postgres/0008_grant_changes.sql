-- Every change to a grant takes the next number, so that gateways re-read only the
-- grants changed since they last looked (every pushed document adds a referral grant;
-- re-reading them all every two seconds grew without bound).
CREATE TABLE grant_change (id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL);
INSERT INTO grant_change (id, seq) VALUES (1, 0);
ALTER TABLE policy_grant ADD COLUMN changed BIGINT NOT NULL DEFAULT 0;
CREATE INDEX policy_grant_changed ON policy_grant (changed);
