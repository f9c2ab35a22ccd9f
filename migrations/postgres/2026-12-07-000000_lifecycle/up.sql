-- Messages that live: replies, edits, deletions and reactions. A room's
-- seq (rooms.last_seq) now numbers every durable event: a message (a row of
-- `messages`) or a change of one (a row of `message_events`); the two tables
-- never hold the same (room, seq).

-- The message's current state: what ListHistory shows and a replay sends.
ALTER TABLE messages
    -- The message it replies to (same room); 0: not a reply.
    ADD COLUMN reply_to_seq BIGINT NOT NULL DEFAULT 0 CHECK (reply_to_seq >= 0),
    -- When it was last edited (microseconds since the Unix epoch); NULL:
    -- never.
    ADD COLUMN edited_at_micros BIGINT,
    -- A tombstone: content erased, reactions gone; seq, sender, sent_at and
    -- reply_to_seq stay.
    ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT FALSE,
    -- The seq of the newest event that changed it; 0 while none did (then
    -- it is the message's own seq).
    ADD COLUMN updated_seq BIGINT NOT NULL DEFAULT 0 CHECK (updated_seq >= 0);

-- Every change of a message, at its own seq, for streams that replay.
CREATE TABLE message_events (
    room TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq >= 1),
    -- 2 edited, 3 deleted, 4 reaction changed.
    kind SMALLINT NOT NULL CHECK (kind BETWEEN 2 AND 4),
    -- The message changed.
    message_seq BIGINT NOT NULL CHECK (message_seq >= 1),
    -- Who: the editor, the deleter, the user whose reaction changed.
    actor_id TEXT NOT NULL,
    actor_name TEXT NOT NULL,
    -- An edit's new content; erased when the message is deleted.
    content TEXT NOT NULL DEFAULT '',
    -- A reaction change: the reaction, added or removed, how many users
    -- hold it after the change.
    reaction TEXT NOT NULL DEFAULT '',
    added BOOLEAN NOT NULL DEFAULT FALSE,
    count INTEGER NOT NULL DEFAULT 0 CHECK (count >= 0),
    -- When (microseconds since the Unix epoch).
    at_micros BIGINT NOT NULL,
    PRIMARY KEY (room, seq)
);

-- The edits of a message, erased with it.
CREATE INDEX message_events_edits ON message_events (room, message_seq) WHERE kind = 2;

-- Who holds which reaction on which message now.
CREATE TABLE reactions (
    room TEXT NOT NULL,
    message_seq BIGINT NOT NULL,
    reaction TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- The seq of the event that added it: a message's reactions are listed
    -- in the order they were first added.
    added_seq BIGINT NOT NULL,
    PRIMARY KEY (room, message_seq, reaction, user_id)
);

-- The user's display name as of their last read marker move, for
-- ListReadMarkers.
ALTER TABLE room_users ADD COLUMN display_name TEXT NOT NULL DEFAULT '';

-- ListReadMarkers: a room's markers, highest first.
CREATE INDEX room_users_markers ON room_users (room, read_seq DESC, user_id) WHERE read_seq > 0;
