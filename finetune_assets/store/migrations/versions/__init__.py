"""Revisions of the platform's tables, oldest first (`v0001_initial` is the schema of the first release)."""
