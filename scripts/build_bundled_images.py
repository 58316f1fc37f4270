"""Write the natural images bundled in cem_checks/data/images from scikit-image's sample data.

Only images whose licence allows redistribution are used (see cem_checks/data/NOTICE.md). Run with
scikit-image installed (``pip install scikit-image``): ``python scripts/build_bundled_images.py``.
"""

from pathlib import Path

from PIL import Image
from skimage import data

IMAGES = ["astronaut", "chelsea", "coffee", "rocket"]
OUT = Path(__file__).resolve().parents[1] / "cem_checks" / "data" / "images"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in IMAGES:
        arr = getattr(data, name)()
        Image.fromarray(arr).save(OUT / f"{name}.png", optimize=True)
        print(f"{name}: {arr.shape} -> {OUT / (name + '.png')}")


if __name__ == "__main__":
    main()
