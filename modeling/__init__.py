"""Everything about the served network: its metadata, its custom layers, how it is loaded."""
