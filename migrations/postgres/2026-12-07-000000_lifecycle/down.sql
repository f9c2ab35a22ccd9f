DROP INDEX room_users_markers;
ALTER TABLE room_users DROP COLUMN display_name;
DROP TABLE reactions;
DROP TABLE message_events;
ALTER TABLE messages
    DROP COLUMN updated_seq,
    DROP COLUMN deleted,
    DROP COLUMN edited_at_micros,
    DROP COLUMN reply_to_seq;
