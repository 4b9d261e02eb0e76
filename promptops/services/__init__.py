"""Use cases: the only layer that joins prompt files, statistics and the database."""
