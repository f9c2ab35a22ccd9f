-- Every send moves its sender's read marker (room_users.read_seq); while
-- read_seq was indexed, each move also rewrote the row's index entry.
-- ListReadMarkers now reads a room's rows by (room, user_id) and sorts them
-- by marker. (PostgreSQL's migration of the same name explains the rest.)
DROP INDEX room_users_markers;
CREATE INDEX room_users_rooms ON room_users (room, user_id);
