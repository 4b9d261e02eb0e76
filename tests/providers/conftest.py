"""Fixtures of the provider tests: the fake upstream server."""

from tests.fakeupstream import fake_upstream  # noqa: F401  (a fixture)
