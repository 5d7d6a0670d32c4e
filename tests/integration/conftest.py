"""Fixtures shared by the integration tests."""

from tests.integration.test_gateway import world as world  # the gateway test world
