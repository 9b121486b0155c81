"""Stores on PostgreSQL, shared by every node: key store, billing ledger, model store and the
training-job board (PROTOCOL §5). Work in progress: registers nothing yet."""
