"""The test suite of flask-oa-recall."""
