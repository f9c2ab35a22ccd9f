-- The same schema as migrations/postgres, in SQLite's dialect; the column
-- types are the ones diesel maps to the shared src/storage/schema.rs.

-- One row per room that ever stored a message; `last_seq` is the room's
-- counter, bumped in the transaction that inserts the messages.
CREATE TABLE rooms (
    name TEXT PRIMARY KEY NOT NULL,
    last_seq BIGINT NOT NULL CHECK (last_seq >= 0)
) WITHOUT ROWID;

-- Every stored message, keyed by the room's total order.
CREATE TABLE messages (
    room TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq >= 1),
    sender_id TEXT NOT NULL,
    sender_name TEXT NOT NULL,
    -- chat.v1.ContentType: 1 text, 2 image, 3 file.
    content_type SMALLINT NOT NULL CHECK (content_type BETWEEN 1 AND 3),
    content TEXT NOT NULL,
    client_message_id TEXT,
    -- Microseconds since the Unix epoch (UTC).
    sent_at_micros BIGINT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;

-- Retries with the same (room, sender, client_message_id) find the original.
CREATE UNIQUE INDEX messages_idempotency_key
    ON messages (room, sender_id, client_message_id)
    WHERE client_message_id IS NOT NULL;
