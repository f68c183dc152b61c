"""Helpers shared by the integration, e2e and fault tests: waiting on a condition
with a deadline, and the API calls every scenario starts with."""
