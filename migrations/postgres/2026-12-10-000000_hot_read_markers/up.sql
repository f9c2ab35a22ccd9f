-- Every send moves its sender's read marker (room_users.read_seq). While
-- read_seq was indexed, each move was a new row version plus an entry in
-- each of the table's indexes; with no index on it, PostgreSQL updates the
-- row in place on its page (a HOT update: no index entries, about half the
-- buffers and WAL), given free room on the page, which the fill factor
-- keeps (it applies to pages written from now on).
--
-- ListReadMarkers now reads a room's rows by (room, user_id) and sorts them
-- by marker: a room's markers are read whole, each page at most once per
-- read-rate token.
DROP INDEX room_users_markers;
CREATE INDEX room_users_rooms ON room_users (room, user_id);
ALTER TABLE room_users SET (fillfactor = 70);
