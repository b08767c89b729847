-- Schema 3: the state of operator notifications (contract section 10), kept with the data so that
-- a restart or another node neither repeats nor forgets a notification.

-- Dead letters not yet told, per endpoint: how many, and the first few dead-letter numbers. Added to
-- by the settle that dead-letters (under its endpoint's row lock), emptied by the round that sends
-- the grouped `delivery.dead_lettered`.
CREATE TABLE notice_dead_letters (
    endpoint_num bigint PRIMARY KEY,
    count        bigint NOT NULL,
    samples      bigint[] NOT NULL
);

-- Failing spells already told with `endpoint.failing`: when the spell began. Removed by the settle
-- of the first success after it, which tells `endpoint.recovered`.
CREATE TABLE notice_failing (
    endpoint_num bigint PRIMARY KEY,
    since_ms     bigint NOT NULL
);

-- Single marks: 'dead_letters_at' (when the last grouped notification was made) and 'stalled'
-- (the queue was told stalled, and when).
CREATE TABLE notice_marks (
    name  text PRIMARY KEY,
    at_ms bigint NOT NULL
);
