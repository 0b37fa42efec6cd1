"""Copies the browser test's screenshots that README.md shows into docs/img/ as small PNGs.

Run after `pytest -m browser` (screenshots in test-artifacts/e2e/); commit the result. Only the
images the README names (docs/img/<name>.png) are written, so the README and the folder agree.
"""

from __future__ import annotations

import re
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
        scale = min(1.0, WIDTH / image.width)  # a phone-width shot keeps its size
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
        image = image.crop((0, 0, image.width, min(image.height, HEIGHT_LIMIT)))
        # A 128-colour palette keeps admin screenshots legible at a fraction of the size.
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target.stat().st_size


def readme_images() -> list[str]:
    """The docs/img/*.png file names README.md shows, in order."""
    text = (ROOT / "README.md").read_text()
    return list(dict.fromkeys(re.findall(r"\(docs/img/([\w.-]+\.png)\)", text)))


def main() -> int:
    wanted = readme_images()
    missing = [name for name in wanted if not (SOURCE / name).exists()]
    if missing:
        print(f"not in {SOURCE}: {', '.join(missing)}: run the browser test", file=sys.stderr)
        return 1
    TARGET.mkdir(parents=True, exist_ok=True)
    too_big = []
    for name in wanted:
        size = shrink(SOURCE / name, TARGET / name)
        print(f"{name}: {size // 1024} KiB")
        if size > MAX_BYTES:
            too_big.append(name)
    if too_big:
        print("over 150 KiB: " + ", ".join(too_big), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
