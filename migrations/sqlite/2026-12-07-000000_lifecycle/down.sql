DROP INDEX room_users_markers;
ALTER TABLE room_users DROP COLUMN display_name;
DROP TABLE reactions;
DROP TABLE message_events;
ALTER TABLE messages DROP COLUMN updated_seq;
ALTER TABLE messages DROP COLUMN deleted;
ALTER TABLE messages DROP COLUMN edited_at_micros;
ALTER TABLE messages DROP COLUMN reply_to_seq;
