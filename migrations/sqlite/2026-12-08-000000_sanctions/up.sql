-- The same schema as migrations/postgres, in SQLite's dialect: bans and
-- mutes, one row per (room, user, kind); room '' is every room.
CREATE TABLE sanctions (
    room TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- 1 ban, 2 mute.
    kind SMALLINT NOT NULL CHECK (kind IN (1, 2)),
    until_micros BIGINT NULL,
    reason TEXT NOT NULL,
    created_micros BIGINT NOT NULL,
    PRIMARY KEY (room, user_id, kind)
) WITHOUT ROWID;

CREATE INDEX sanctions_newest ON sanctions (created_micros DESC, room, user_id, kind);
CREATE INDEX sanctions_users ON sanctions (user_id, room);
