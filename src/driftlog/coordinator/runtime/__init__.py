"""The coordinator at run time: the shard writer, an agent's read view, the writer RPC,
and the facade agents use (`service.py`)."""
