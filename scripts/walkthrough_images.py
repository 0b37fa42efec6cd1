"""Copies the browser test's screenshots into docs/img/ as small PNGs for the README.

Run after `pytest -m browser` (screenshots in test-artifacts/e2e/); commit the result once.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "test-artifacts" / "e2e"
TARGET = ROOT / "docs" / "img"
WIDTH = 900
HEIGHT_LIMIT = 2000  # very long pages are cut at the bottom (the form fields)
MAX_BYTES = 150 * 1024


def shrink(source: Path, target: Path) -> int:
    with Image.open(source) as image:
        image = image.convert("RGB")
        scale = WIDTH / image.width
        image = image.resize((WIDTH, round(image.height * scale)), Image.Resampling.LANCZOS)
        image = image.crop((0, 0, WIDTH, min(image.height, HEIGHT_LIMIT)))
        # A 128-colour palette keeps admin screenshots legible at a fraction of the size.
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target.stat().st_size


def main() -> int:
    shots = sorted(SOURCE.glob("*.png"))
    if not shots:
        print(f"no screenshots in {SOURCE}: run the browser test first", file=sys.stderr)
        return 1
    TARGET.mkdir(parents=True, exist_ok=True)
    too_big = []
    for shot in shots:
        size = shrink(shot, TARGET / shot.name)
        print(f"{shot.name}: {size // 1024} KiB")
        if size > MAX_BYTES:
            too_big.append(shot.name)
    if too_big:
        print("over 150 KiB: " + ", ".join(too_big), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
