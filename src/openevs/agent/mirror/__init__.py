"""Synchronous replication of volumes to a peer AZ's agent (manager.py drives replica.py)."""
