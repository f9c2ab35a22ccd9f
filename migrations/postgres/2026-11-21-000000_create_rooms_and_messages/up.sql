-- One row per room that ever stored a message. `last_seq` is the room's
-- counter: a batch of k messages bumps it by k inside the same transaction
-- that inserts them, so seq is gapless, never reused, and serialized per room
-- by the row lock.
CREATE TABLE rooms (
    name TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL CHECK (last_seq >= 0)
);

-- Every stored message. (room, seq) is the room's total order and the key
-- history pages walk. The sender is stored with the message: a later token
-- with another display name does not rewrite history.
CREATE TABLE messages (
    room TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq >= 1),
    sender_id TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    -- chat.v1.ContentType: 1 text, 2 image, 3 file.
    content_type SMALLINT NOT NULL CHECK (content_type BETWEEN 1 AND 3),
    content TEXT NOT NULL,
    -- The sender's idempotency key; NULL when the client gave none.
    client_message_id TEXT,
    -- When the server stored the message, in microseconds since the Unix
    -- epoch (UTC): the exact value clients get back in `sent_at`.
    sent_at_micros BIGINT NOT NULL,
    PRIMARY KEY (room, seq)
);

-- A retry with the same (room, sender, client_message_id) finds the original
-- message here instead of storing a second one.
CREATE UNIQUE INDEX messages_idempotency_key
    ON messages (room, sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
