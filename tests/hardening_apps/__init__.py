"""Helpers and small host apps for the hardening tests (hostile input, transport, faults, soak)."""
