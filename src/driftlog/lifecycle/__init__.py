"""Storage lifecycle: garbage collection of objects and compaction of small ones."""
