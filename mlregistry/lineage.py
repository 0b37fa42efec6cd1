"""Where a version came from: the run, the code and the data. Optional, set once when the
version is registered (upload, admin, client, training job), and then read-only."""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from config.errors import ValidationFailed

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}")
# A git object name: SHA-1 (40) or SHA-256 (64) hex, or an abbreviation of at least 7.
GIT_COMMIT_PATTERN = re.compile(r"[0-9a-f]{7,64}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
URI_MAX_LENGTH = 2000
_URL = URLValidator(schemes=["http", "https"])


@dataclass(frozen=True)
class Lineage:
    """The lineage columns of a ModelVersion, checked ("" = not recorded)."""

    run_id: str = ""
    git_commit: str = ""
    source_url: str = ""
    training_dataset_uri: str = ""
    training_dataset_sha256: str = ""

    def as_fields(self) -> dict[str, str]:
        return {
            "run_id": self.run_id,
            "git_commit": self.git_commit,
            "source_url": self.source_url,
            "training_dataset_uri": self.training_dataset_uri,
            "training_dataset_sha256": self.training_dataset_sha256,
        }


def lineage_validate(
    *,
    run_id: Any = None,
    git_commit: Any = None,
    source_url: Any = None,
    training_dataset: Any = None,
) -> Lineage:
    """The checked lineage; ValidationFailed (400) naming every bad field. `training_dataset`
    is `{"uri": str, "sha256": 64 hex (optional)}`; hex is stored lower-case."""
    errors: dict[str, list[str]] = {}

    def text(value: Any, name: str) -> str:
        if value is None or value == "":
            return ""
        if not isinstance(value, str):
            errors[name] = ["must be a string"]
            return ""
        return value.strip()

    run = text(run_id, "run_id")
    if run and not RUN_ID_PATTERN.fullmatch(run):
        errors["run_id"] = ["must match ^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}$"]
    commit = text(git_commit, "git_commit").lower()
    if commit and not GIT_COMMIT_PATTERN.fullmatch(commit):
        errors["git_commit"] = ["must be a git commit id: 7 to 64 hexadecimal digits"]
    url = text(source_url, "source_url")
    if url:
        try:
            if len(url) > URI_MAX_LENGTH:
                raise ValidationError("too long")
            _URL(url)
        except ValidationError:
            errors["source_url"] = [f"must be an http(s) URL of at most {URI_MAX_LENGTH} chars"]
    uri = sha = ""
    if training_dataset not in (None, "", {}):
        if not isinstance(training_dataset, dict) or set(training_dataset) - {"uri", "sha256"}:
            errors["training_dataset"] = ['must be an object {"uri": ..., "sha256": ...}']
        else:
            uri = text(training_dataset.get("uri"), "training_dataset.uri")
            sha = text(training_dataset.get("sha256"), "training_dataset.sha256").lower()
            if not uri:
                errors.setdefault("training_dataset.uri", ["required"])
            elif len(uri) > URI_MAX_LENGTH or any(ord(c) < 32 for c in uri):
                errors["training_dataset.uri"] = [
                    f"at most {URI_MAX_LENGTH} characters, no control characters"
                ]
            if sha and not SHA256_PATTERN.fullmatch(sha):
                errors["training_dataset.sha256"] = ["must be 64 hexadecimal digits"]
    if errors:
        raise ValidationFailed("Invalid lineage.", fields=errors)
    return Lineage(run, commit, url, uri, sha)


def dataset_uri(dataset: Any) -> str:
    """How a version trained by the product names its dataset: `dataset://<id>/<name>`."""
    return f"dataset://{dataset.pk}/{dataset.name}"


def frame_sha256(features: Any, target: Any) -> str:
    """SHA-256 of rows read from a query (features, then the target column), as CSV without
    the index: the same rows give the same digest, whatever database served them."""
    digest = hashlib.sha256(features.to_csv(index=False).encode())
    digest.update(target.to_csv(index=False).encode())
    return digest.hexdigest()


@functools.cache
def code_version() -> str:
    """The git commit of the running code: settings.CODE_VERSION (set by the deployment), else
    the checkout's HEAD read from its .git (a worktree's .git file is followed); "" when
    neither names a commit. Read once per process."""
    configured = (getattr(settings, "CODE_VERSION", "") or "").strip().lower()
    if GIT_COMMIT_PATTERN.fullmatch(configured):
        return configured
    try:
        git = Path(settings.BASE_DIR) / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            if not ref_file.exists():
                common = git / "commondir"
                base = (git / common.read_text().strip()) if common.exists() else git
                ref_file = base / ref
                if not ref_file.exists():
                    packed = (base / "packed-refs").read_text().splitlines()
                    head = next(line.split()[0] for line in packed if line.endswith(" " + ref))
                    return head if GIT_COMMIT_PATTERN.fullmatch(head) else ""
            head = ref_file.read_text().strip()
        return head if GIT_COMMIT_PATTERN.fullmatch(head) else ""
    except (OSError, IndexError, StopIteration, ValueError):
        return ""
