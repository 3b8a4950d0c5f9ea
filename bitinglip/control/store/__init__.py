"""The state: the SQLite store, its schema migrations, the private data dir, atomic files."""
