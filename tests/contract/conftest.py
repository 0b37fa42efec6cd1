from tests.live import live_world  # noqa: F401 - a fixture
