from rest_framework.permissions import SAFE_METHODS, BasePermission

from mlregistry.access import model_access_check


class RegistryPermission(BasePermission):
    """Reads: any authenticated client. Writes: staff users holding the view's permission.

    A view names the Django permission each unsafe method needs in `write_permissions`.
    """

    message = "Registry writes need a staff account with the matching permission."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if "name" in getattr(view, "kwargs", {}):
            # A client restricted to some models gets the same 404 as for a missing model.
            model_access_check(user=user, model_name=view.kwargs["name"])
        if request.method in SAFE_METHODS or not hasattr(view, request.method.lower()):
            return True  # reads, and methods the view lacks (answered 405, not 403)
        perm = getattr(view, "write_permissions", {}).get(request.method)
        return bool(user.is_staff and perm and user.has_perm(perm))


class ArtifactDownloadPermission(BasePermission):
    """Artifact bytes are the model itself: staff, or a user granted download_modelversion."""

    message = "Downloading artifacts needs a staff account or the download_modelversion permission."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        model_access_check(user=user, model_name=view.kwargs["name"])
        return bool(user.is_staff or user.has_perm("mlregistry.download_modelversion"))
