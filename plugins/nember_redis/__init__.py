"""A connection registry on Redis, shared by every node (PROTOCOL §5). Work in progress:
registers nothing yet."""
