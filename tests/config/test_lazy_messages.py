"""config.middleware.LazyMessageMiddleware: Django's messages, with the storage built only when a
request uses it."""

from django.contrib import messages
from django.contrib.sessions.middleware import SessionMiddleware
from django.core import checks
from django.http import HttpResponse
from django.test import RequestFactory
from django.utils.functional import empty

from config.middleware import LazyMessageMiddleware


def _through(use_messages):
    def view(request):
        if use_messages:
            messages.success(request, "Version 3 promoted to production.")
        return HttpResponse("ok")

    request = RequestFactory().get("/")
    SessionMiddleware(lambda r: None).process_request(request)
    response = LazyMessageMiddleware(view)(request)
    return request, response


def test_a_request_that_uses_no_messages_builds_no_storage():
    request, response = _through(use_messages=False)
    assert request._messages._wrapped is empty
    assert "messages" not in response.cookies


def test_a_message_is_stored_for_the_next_page_as_before():
    _, response = _through(use_messages=True)
    assert "messages" in response.cookies  # the cookie storage, as Django's middleware does
    follow_up = RequestFactory().get(
        "/", HTTP_COOKIE=f"messages={response.cookies['messages'].value}"
    )
    SessionMiddleware(lambda r: None).process_request(follow_up)
    LazyMessageMiddleware(lambda r: HttpResponse())(follow_up)
    assert [str(m) for m in messages.get_messages(follow_up)] == [
        "Version 3 promoted to production."
    ]


def test_the_admin_accepts_it_as_its_message_middleware():
    errors = [e for e in checks.run_checks() if e.id == "admin.E409"]
    assert errors == []
