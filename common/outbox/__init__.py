"""The transactional outbox: what a transaction must send is a row of that transaction
(`store`); the relay publishes rows after commit as dramatiq messages or Redis Stream events,
at least once, with ids that make duplicates recognisable (`relay`)."""
