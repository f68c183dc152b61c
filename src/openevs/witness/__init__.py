"""The quorum witness: arbitration of synchronous replication (DESIGN 3, "Arbitration")."""
