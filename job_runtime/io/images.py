"""Images into a pixel budget before the processor sees them, as EasyR1 and LLaMA-Factory do.

Both frameworks resize every image by the same rule before Qwen2-VL's processor (which then
rounds to its 28-pixel grid): EasyR1 ``ImageProcessMixin.process_image`` (verl/utils/dataset.py,
``data.min_pixels`` 262144 / ``data.max_pixels`` 4194304) and LLaMA-Factory
``BasePlugin._preprocess_image`` (src/llamafactory/data/mm_plugin.py, ``image_max_pixels`` /
``image_min_pixels``):

1. more than ``max_pixels``: scale both sides by sqrt(max_pixels / (w x h)), truncating to ints;
2. then fewer than ``min_pixels``: scale both sides by sqrt(min_pixels / (w x h)), truncating;
3. convert to RGB.

Resizing uses Pillow's default filter (bicubic), as both frameworks call ``image.resize((w, h))``.
LLaMA-Factory's Qwen2-VL plugin (``Qwen2vlPlugin._preprocess_image``) then widens a side below 28
pixels to 28 and squeezes an aspect ratio beyond 200 to 180 (nearest-neighbour): `qwen2vl_guards`.
Without bounds (``None``) an image is only converted to RGB and left to the processor's own
limits (Qwen2-VL: 3136 .. 12845056 pixels).

>>> from PIL import Image
>>> fit(Image.new("RGB", (64, 64)), min_pixels=262144, max_pixels=4194304).size   # small diagrams grow
(512, 512)
>>> fit(Image.new("RGB", (4000, 3000)), min_pixels=262144, max_pixels=4194304).size
(2364, 1773)
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["fit", "fit_batch"]

QWEN2VL_MIN_SIDE = 28


def fit(image: Any, min_pixels: int | None = None, max_pixels: int | None = None, qwen2vl_guards: bool = False) -> Any:
    """The image resized into [min_pixels, max_pixels] (EasyR1 / LLaMA-Factory rule), in RGB.

    >>> from PIL import Image
    >>> fit(Image.new("L", (10, 10))).mode, fit(Image.new("RGB", (10, 10)), qwen2vl_guards=True).size
    ('RGB', (28, 28))
    """
    from PIL import Image

    if max_pixels is not None and image.width * image.height > max_pixels:
        factor = math.sqrt(max_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if min_pixels is not None and image.width * image.height < min_pixels:
        factor = math.sqrt(min_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if qwen2vl_guards:
        if min(image.width, image.height) < QWEN2VL_MIN_SIDE:
            image = image.resize((max(image.width, QWEN2VL_MIN_SIDE), max(image.height, QWEN2VL_MIN_SIDE)),
                                 resample=Image.NEAREST)
        if image.width / image.height > 200:
            image = image.resize((image.height * 180, image.height), resample=Image.NEAREST)
        if image.height / image.width > 200:
            image = image.resize((image.width, image.width * 180), resample=Image.NEAREST)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def fit_batch(batch: dict[str, list[Any]], keys: tuple[str, ...], min_pixels: int | None, max_pixels: int | None,
              qwen2vl_guards: bool = False) -> dict[str, list[Any]]:
    """A datasets batch with the images under `keys` (one image or a list per row) fitted;
    for ``Dataset.with_transform``, so images are resized as rows are read, like EasyR1's ``__getitem__``.

    >>> from PIL import Image
    >>> out = fit_batch({"image": [Image.new("RGB", (8, 8))], "answer": ["1"]}, ("image",), 256, None)
    >>> out["image"][0].size, out["answer"]
    ((16, 16), ['1'])
    """
    out = dict(batch)
    for key in keys:
        if key in out:
            out[key] = [
                [fit(im, min_pixels, max_pixels, qwen2vl_guards) for im in v] if isinstance(v, list)
                else (fit(v, min_pixels, max_pixels, qwen2vl_guards) if v is not None else None)
                for v in out[key]
            ]
    return out
