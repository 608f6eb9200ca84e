"""Cluster mode: membership, placement of leaders and group coordinators, the writer RPC."""
