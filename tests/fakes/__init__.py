"""Local fakes of external services, usable from tests and from end-to-end worker processes."""
