"""Data for s2e: the WebDataset shard format for navigation episodes and the streaming DataModules."""
