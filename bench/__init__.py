"""Benchmarks that run against real services (PostgreSQL, the API process); not shipped."""
