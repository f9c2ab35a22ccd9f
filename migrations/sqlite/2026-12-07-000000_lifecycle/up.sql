-- The same schema as migrations/postgres, in SQLite's dialect (one column
-- per ALTER TABLE).

ALTER TABLE messages ADD COLUMN reply_to_seq BIGINT NOT NULL DEFAULT 0 CHECK (reply_to_seq >= 0);
ALTER TABLE messages ADD COLUMN edited_at_micros BIGINT;
ALTER TABLE messages ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE messages ADD COLUMN updated_seq BIGINT NOT NULL DEFAULT 0 CHECK (updated_seq >= 0);

CREATE TABLE message_events (
    room TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq >= 1),
    kind SMALLINT NOT NULL CHECK (kind BETWEEN 2 AND 4),
    message_seq BIGINT NOT NULL CHECK (message_seq >= 1),
    actor_id TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    reaction TEXT NOT NULL DEFAULT '',
    added BOOLEAN NOT NULL DEFAULT FALSE,
    count INTEGER NOT NULL DEFAULT 0 CHECK (count >= 0),
    at_micros BIGINT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;

CREATE INDEX message_events_edits ON message_events (room, message_seq) WHERE kind = 2;

CREATE TABLE reactions (
    room TEXT NOT NULL,
    message_seq BIGINT NOT NULL,
    reaction TEXT NOT NULL,
    user_id TEXT NOT NULL,
    added_seq BIGINT NOT NULL,
    PRIMARY KEY (room, message_seq, reaction, user_id)
) WITHOUT ROWID;

ALTER TABLE room_users ADD COLUMN display_name TEXT NOT NULL DEFAULT '';

CREATE INDEX room_users_markers ON room_users (room, read_seq DESC, user_id) WHERE read_seq > 0;
