"""Authentication, authorization and quotas: pure rules here, wired in by the server."""
