DROP TABLE access_revision;
DROP TABLE room_users;
ALTER TABLE rooms DROP COLUMN visibility;
