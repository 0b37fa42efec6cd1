"""`/`: a landing page instead of a JSON 404, and the admin's "View site" goes there."""

import re

import pytest

from tests import factories

pytestmark = pytest.mark.django_db


def test_landing_page_links_every_entry_point_and_each_link_answers(client):
    page = client.get("/")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    html = page.content.decode()
    links = re.findall(r'href="([^"]+)"', html)
    assert set(links) >= {"/admin/", "/api/docs/", "/health/ready", "/metrics"}
    for link in links:
        assert client.get(link).status_code in {200, 302, 403}, link
    # The first steps show this server's own address and the staff-token recipe.
    assert "http://testserver/api/v1/models/iris-classifier/predict" in html
    assert "create_api_token alice --staff" in html
    assert not re.search(r"""(src|href)="(https?:)?//""", html)  # nothing from outside


def test_landing_page_answers_only_reads(client):
    assert client.post("/").status_code == 405


def test_admin_view_site_goes_to_the_landing_page(client):
    client.force_login(factories.staff_create("viewer"))
    html = client.get("/admin/").content.decode()
    assert re.search(r'<a href="/">View site</a>', html), html[:2000]
