DROP TABLE sanctions;
