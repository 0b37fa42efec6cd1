from django import template

from mlregistry.webhooks.health import webhooks_disabled_by_failure

register = template.Library()


@register.inclusion_tag("admin/mlregistry/webhook/_disabled_notice.html")
def webhooks_disabled_notice() -> dict:
    """The dashboard's warning about webhooks the registry turned off after failing."""
    return {"disabled": webhooks_disabled_by_failure()}
