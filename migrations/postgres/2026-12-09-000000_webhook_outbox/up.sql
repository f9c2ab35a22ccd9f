-- Webhooks: every committed event waits here until the app's backend has
-- acknowledged it (2xx). A row is written in the transaction that commits
-- its event, only while webhooks are on (CHAT_WEBHOOK_URL); it is deleted
-- once delivered, or dropped past CHAT_WEBHOOK_MAX_AGE.
CREATE TABLE webhook_outbox (
    -- Never reused: part of the webhook-id a receiver deduplicates by.
    id BIGSERIAL PRIMARY KEY,
    -- The room; '' for a sanction on every room.
    room TEXT NOT NULL,
    -- A room event (message, edit, deletion, reaction change): its seq, and
    -- the event is read from the room's history when it is delivered.
    -- 0: an access or moderation event, carried whole in `payload`.
    seq BIGINT NOT NULL CHECK (seq >= 0),
    -- The encoded chat.v1.Event when seq is 0; NULL otherwise.
    payload BYTEA,
    -- When the event was committed (microseconds since the Unix epoch).
    created_micros BIGINT NOT NULL,
    -- When it may next be tried: now for a new event, the end of the lease
    -- while a node delivers it, the backoff after a failed try.
    due_micros BIGINT NOT NULL,
    -- Failed tries so far (the backoff doubles with each).
    attempts INTEGER NOT NULL DEFAULT 0,
    -- The claim of the node delivering it (random; 0: none): only that
    -- claim may delete or reschedule the row.
    lease BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (due_micros, id);
