"""CMYK pixels to sRGB as a person would see them: one conversion for preprocessing and evidence.

Pillow only, no process-wide state (no decoder registered here): :mod:`engine.imaging` prepares
photos with it, :mod:`engine.evidence.visual` fingerprints images with it.
"""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageCms

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
JPEG_FORMATS = frozenset({"JPEG", "MPO"})


def cmyk_to_rgb(
    img: Image.Image, source_format: str | None, steps: list[str] | None = None
) -> Image.Image:
    """RGB from CMYK ``img``: through its embedded ICC profile when it has a readable one,
    else Pillow's formula. What was done is appended to ``steps`` when given."""
    done = steps if steps is not None else []
    # Pillow decodes every CMYK JPEG as Adobe-inverted (what Photoshop writes, with an APP14
    # "Adobe" marker). Without that marker the samples are plain: undo Pillow's inversion.
    if source_format in JPEG_FORMATS and "adobe" not in img.info:
        img = ImageChops.invert(img)
        done.append("cmyk_uninverted")
    icc = img.info.get("icc_profile")
    if icc:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            rgb = ImageCms.profileToProfile(img, profile, SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            done.append("icc_invalid")
        else:
            assert rgb is not None  # profileToProfile returns None only with inPlace=True
            done.append("cmyk_icc")
            return rgb
    done.append("cmyk->rgb")
    return img.convert("RGB")
