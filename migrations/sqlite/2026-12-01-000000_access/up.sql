-- The same schema as migrations/postgres, in SQLite's dialect.

-- 1 public, 2 private; never changes once the row exists.
ALTER TABLE rooms
    ADD COLUMN visibility SMALLINT NOT NULL DEFAULT 1 CHECK (visibility IN (1, 2));

-- A user's rooms: grants of private rooms (`granted`), public rooms they
-- joined, sent to or marked read, with their read marker.
CREATE TABLE room_users (
    user_id TEXT NOT NULL,
    room TEXT NOT NULL,
    granted BOOLEAN NOT NULL DEFAULT FALSE,
    read_seq BIGINT NOT NULL DEFAULT 0 CHECK (read_seq >= 0),
    since_micros BIGINT NOT NULL,
    PRIMARY KEY (user_id, room)
) WITHOUT ROWID;

CREATE INDEX room_users_grants ON room_users (room, user_id) WHERE granted;

-- Bumped by every RevokeAccess (see migrations/postgres).
CREATE TABLE access_revision (
    id SMALLINT PRIMARY KEY NOT NULL CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO access_revision (id, revision) VALUES (1, 0);
