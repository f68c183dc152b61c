"""openevs: an open, self-hostable Elastic Volume Service with cross-AZ replication."""
