import re

import pytest

pytestmark = pytest.mark.django_db


def test_swagger_ui_loads_nothing_from_outside(client):
    page = client.get("/api/docs/").content.decode()
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)
    assert sources, page[:500]
    assert all(not s.startswith(("http:", "https:", "//")) for s in sources), sources
    assert "swagger-ui" in page
    assert not re.search(r"https?://(cdn|unpkg|fonts)", page)


def test_swagger_ui_assets_are_served_locally(client):
    page = client.get("/api/docs/").content.decode()
    bundle = re.search(r'src="([^"]*swagger-ui-bundle\.js)"', page).group(1)
    from django.contrib.staticfiles import finders

    assert finders.find(bundle.removeprefix("/static/"))


def test_static_assets_are_served_by_the_app(client, settings):
    settings.WHITENOISE_USE_FINDERS = True
    response = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[:100]
