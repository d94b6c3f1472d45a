"""dramatiq worker processes: thin actors over the plain async functions in `common/`."""
