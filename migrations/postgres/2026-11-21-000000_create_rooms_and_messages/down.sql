DROP TABLE messages;
DROP TABLE rooms;
