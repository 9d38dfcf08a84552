"""Persistence for flowerbot: the database engine, ORM models, photo files and the repository of queries."""
