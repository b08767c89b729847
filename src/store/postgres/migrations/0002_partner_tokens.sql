-- Schema 2: partner tokens and endpoint stats (contract section 9).

CREATE SEQUENCE token_seq;

-- A partner token is stored as its SHA-256 only; revoked and expired ones stay (so a refusal can
-- name them) until retention removes them.
CREATE TABLE partner_tokens (
    num           bigint PRIMARY KEY,
    hash          bytea NOT NULL UNIQUE,
    partner_id    text NOT NULL,
    environment   text,
    read_only     boolean NOT NULL,
    description   text NOT NULL,
    created_at_ms bigint NOT NULL,
    expires_at_ms bigint NOT NULL,
    revoked_at_ms bigint
);
CREATE INDEX partner_tokens_of_partner ON partner_tokens (partner_id, num);

-- Attempts per endpoint and hour (hours since the epoch), counted by the settle's transaction:
-- latency holds the counts of stats::LATENCY_BOUNDS_MS's buckets, then the overflow.
CREATE TABLE endpoint_stats (
    endpoint_num bigint NOT NULL,
    hour         bigint NOT NULL,
    succeeded    bigint NOT NULL,
    failed       bigint NOT NULL,
    latency      bigint[] NOT NULL,
    PRIMARY KEY (endpoint_num, hour)
);

-- A partner token's lists: its events newest first, dead letters by endpoint.
CREATE INDEX events_of_partner ON events (partner_id, environment, seq);
CREATE INDEX dead_letters_of_endpoint ON dead_letters (endpoint_num, seq);
