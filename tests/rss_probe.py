"""Runs one archive reader on one file in a fresh process and prints its peak memory growth.

    python -m tests.rss_probe KIND PATH    ->  {"growth_mb": ..., "error": "..."}

Peak RSS (getrusage's ru_maxrss) is read after Django, the readers' libraries and the file
are loaded, and again after the reader ran: the difference is what the file cost.
"""

import json
import os
import resource
import sys
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(kind: str, path: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    import pyarrow.parquet  # noqa: F401
    import skops.io  # noqa: F401

    from backups import services as backups
    from mlregistry import artifacts
    from quality import datasets

    readers = {
        "skops": lambda: artifacts.load_skops(Path(path).read_bytes()),
        "parquet": lambda: datasets.read_table(Path(path).read_bytes(), "parquet"),
        "backup": lambda: backups.backup_verify(path=path),
    }
    # The file itself (read by each reader) is not what is measured.
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    before = _peak_mb()
    error = ""
    try:
        readers[kind]()
    except Exception as exc:
        error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)} {getattr(exc, 'fields', '')}"
    del data
    print(json.dumps({"growth_mb": round(_peak_mb() - before, 1), "error": error}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
