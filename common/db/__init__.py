"""Database access: engine creation, schema migrations, the raw-connection helper."""
