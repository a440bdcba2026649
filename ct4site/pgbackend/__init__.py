"""PostgreSQL backend that also sees the `canon` and `ops` schemas (see docs/architecture.md)."""
