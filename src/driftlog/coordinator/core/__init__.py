"""The coordinator's pure core: sequencing, idempotence, transactions, lease rules, the
tail cache, retention and node-id rules. No I/O: time comes in as values."""
