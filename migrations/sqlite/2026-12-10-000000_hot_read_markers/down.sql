DROP INDEX room_users_rooms;
CREATE INDEX room_users_markers ON room_users (room, read_seq DESC, user_id) WHERE read_seq > 0;
