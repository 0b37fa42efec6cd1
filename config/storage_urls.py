"""Where artifacts and backups live, from one URL each: a local folder or an S3 bucket.

`ARTIFACT_STORAGE_URL` / `BACKUP_STORAGE_URL` accept:
- empty: the local folder given as `default_location` (MODEL_STORE_DIR / BACKUP_DIR);
- `file:///abs/path` or `/abs/path`: that local folder;
- `s3://bucket/optional/prefix`: django-storages' S3 backend on that bucket and prefix,
  at `AWS_S3_ENDPOINT_URL` (any S3-compatible server; unset means AWS itself), with the
  credentials boto3 finds the standard way (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
  AWS_PROFILE, an instance role).
Anything else is refused at start-up (ImproperlyConfigured), never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

LOCAL_BACKEND = "mlregistry.storage.AtomicFileSystemStorage"
S3_BACKEND = "mlregistry.storage.S3ArtifactStorage"


def storage_from_url(
    url: str,
    *,
    default_location: Path,
    setting: str,
    endpoint_url: str = "",
    region_name: str = "",
    presigned_expire_seconds: int = 3600,
    private: bool = False,
) -> dict[str, Any]:
    """A STORAGES entry ({"BACKEND", "OPTIONS"}) for `url`; `setting` names the variable in
    the error raised for a URL that is neither a folder nor s3://bucket[/prefix]; `private`
    keeps a local folder's files to the owner (a bucket's access is its policy's business)."""
    url = url.strip()
    if not url:
        return local_storage(default_location, private=private)
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ImproperlyConfigured(f"{setting}: a local folder must be an absolute path.")
        return local_storage(Path(unquote(parts.path)), private=private)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ImproperlyConfigured(f"{setting}: s3:// needs a bucket (s3://bucket/prefix).")
        if parts.query or parts.fragment:
            raise ImproperlyConfigured(f"{setting}: s3://bucket/prefix takes no query string.")
        options: dict[str, Any] = {
            "bucket_name": parts.netloc,
            "location": unquote(parts.path).strip("/"),
            # Content-addressed names: the same name holds the same bytes, so never rename.
            "file_overwrite": True,
            "default_acl": None,
            "querystring_expire": presigned_expire_seconds,
            # Path-style works with every S3-compatible server (MinIO, moto, Ceph) as with AWS.
            "addressing_style": "path",
            "signature_version": "s3v4",
        }
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
        if region_name:
            options["region_name"] = region_name
        return {"BACKEND": S3_BACKEND, "OPTIONS": options}
    raise ImproperlyConfigured(
        f"{setting}: {parts.scheme}:// is not a storage this product speaks "
        "(a local folder, file:///path, or s3://bucket/prefix)."
    )


def local_storage(location: Path, *, private: bool = False) -> dict[str, Any]:
    """A local folder; `private` (backups: database dumps hold password hashes) makes its
    files 0600 and folders 0700."""
    options: dict[str, Any] = {"location": str(location)}
    if private:
        options.update(file_permissions_mode=0o600, directory_permissions_mode=0o700)
    return {"BACKEND": LOCAL_BACKEND, "OPTIONS": options}


def is_remote(entry: dict[str, Any]) -> bool:
    """Whether a STORAGES entry keeps its files off this machine (a read-through cache pays)."""
    return entry["BACKEND"] != LOCAL_BACKEND
