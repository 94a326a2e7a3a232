"""Builders the test files share."""
