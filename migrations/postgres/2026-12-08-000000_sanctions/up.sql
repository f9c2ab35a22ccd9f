-- Bans and mutes (AdminService.BanUser, MuteUser, ...). A row is one user's
-- sanction of one kind in one room, or in every room (room ''); imposing it
-- again replaces the row. Every change also bumps access_revision in the
-- same transaction, so cluster nodes that missed the notice find it.
CREATE TABLE sanctions (
    -- The room, normalized; '' for every room.
    room TEXT NOT NULL,
    -- The user (a token `sub`).
    user_id TEXT NOT NULL,
    -- 1 ban, 2 mute.
    kind SMALLINT NOT NULL CHECK (kind IN (1, 2)),
    -- When it stops applying (microseconds since the Unix epoch); NULL:
    -- until lifted. A row past it is no longer in force (and is replaced by
    -- the next sanction of the same kind).
    until_micros BIGINT NULL,
    -- Why, as the backend said (at most 256 characters).
    reason TEXT NOT NULL,
    -- When it was imposed (microseconds since the Unix epoch).
    created_micros BIGINT NOT NULL,
    PRIMARY KEY (room, user_id, kind)
);

-- ListSanctions: newest first, then the key in order.
CREATE INDEX sanctions_newest ON sanctions (created_micros DESC, room, user_id, kind);
-- The sanctions of one user (the checks, ListSanctions by user).
CREATE INDEX sanctions_users ON sanctions (user_id, room);
