"""nomic-gateway: a caching, accounting gateway in front of Nomic's embedding API."""
