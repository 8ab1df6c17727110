"""Persistence of the service: the database (runs, jobs, tokens, shares) and the run folders on disk."""
