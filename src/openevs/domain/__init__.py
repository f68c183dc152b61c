"""openevs."""
