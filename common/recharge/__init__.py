"""What the charge and retry workers own: the pure recharge policy (`policy`: when to recharge,
the tier ladder, the prepaid rule, run steps), its settings (`config`) and limits (`limits`),
starting runs (`runs`), charging a run one recovery point at a time (`charging`), counting
failures on the ladder and re-checking armed tiers (`ladder`), the account's recharge settings
(`settings`: card, auto-recharge, per-account maximum) and manual top-ups (`manual`). Every SQL
statement of the domain is a named constant in `store`."""
