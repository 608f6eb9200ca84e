"""The coordinator's stores: the database seam (`backend.py`) and its engines, SQLite
(embedded), PostgreSQL (clusters), memory (tests' reference) and a fault injector."""
