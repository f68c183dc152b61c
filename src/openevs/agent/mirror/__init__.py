"""Synchronous replication of volumes to a peer AZ's agent (see manager.py)."""
