"""What the balance worker owns: usage messages decoded into events or kept rejections
(`decode`), the one debit statement that locks accounts, claims event ids and writes the
ledger (`debits`), the service the worker calls (`service`), the group commit that shares one
transaction between concurrently delivered messages (`group_commit`), and rejected usage kept
for inspection (`rejected`). SQL lives in `debits` and `rejected`, as named constants."""
