-- Private rooms, grants, the users' rooms and their read markers.

-- A room's visibility: 1 public, 2 private. A room gets a row when it stores
-- its first message (public) or when AdminService.CreateRoom creates it; once
-- a row exists its visibility never changes.
ALTER TABLE rooms
    ADD COLUMN visibility SMALLINT NOT NULL DEFAULT 1 CHECK (visibility IN (1, 2));

-- A user's rooms. A row of a private room with `granted` is the user's grant;
-- a row of a public room says the room is theirs (they joined it, sent to it
-- or marked it read). A row without `granted` in a private room grants
-- nothing (the room turned private before anyone sent to it, or an admin
-- token used it).
CREATE TABLE room_users (
    user_id TEXT NOT NULL,
    room TEXT NOT NULL,
    granted BOOLEAN NOT NULL DEFAULT FALSE,
    -- The user's read marker: they have read up to this seq. Sending moves
    -- it to the sent message; MarkRead moves it forward only.
    read_seq BIGINT NOT NULL DEFAULT 0 CHECK (read_seq >= 0),
    -- When the room became theirs (microseconds since the Unix epoch): the
    -- activity of a room without messages in ListRooms.
    since_micros BIGINT NOT NULL,
    PRIMARY KEY (user_id, room)
);

-- The grants of a room, for re-checking open streams after a revocation.
CREATE INDEX room_users_grants ON room_users (room, user_id) WHERE granted;

-- Bumped by every RevokeAccess in the transaction that deletes the grants:
-- cluster nodes poll it and re-check their open streams and cached grants
-- when it moved, so a node that missed the NATS notification still acts.
CREATE TABLE access_revision (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO access_revision (id, revision) VALUES (1, 0);
