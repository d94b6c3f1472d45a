"""Accounts and their money: the accounts table and its row locks (`store`, every SQL statement
of the domain), the append-only ledger and credits (`ledger`), the ladder tier and the
suspended/active status with their history (`status`), and what support does (`support`:
create, credit, show)."""
