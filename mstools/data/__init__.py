"""Data: sources, pooling, caching and the activation store."""
