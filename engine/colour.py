"""Any decoded pixels to 8-bit colours as a person would see them (CMYK through its profile,
16-bit and float samples scaled, transparency on white): one conversion for preprocessing and
evidence.

Pillow only, no process-wide state (no decoder registered here): :mod:`engine.imaging` prepares
photos with it, :mod:`engine.evidence.visual` fingerprints images with it.
"""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageCms

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
_WHITE = (255, 255, 255)


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


def to_8bit(
    img: Image.Image, source_format: str | None, steps: list[str] | None = None
) -> Image.Image:
    """Bring any mode to L, LA, RGB or RGBA with 8-bit samples and honest colours. What was
    done is appended to ``steps`` when given.

    Raises:
        ValueError: Pillow cannot convert the pixel mode.
    """
    done = steps if steps is not None else []
    mode = img.mode
    if "transparency" in img.info and mode in ("1", "L", "P", "RGB"):
        return img.convert("RGBA")
    if mode in ("L", "LA", "RGB", "RGBA"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("P", "PA", "RGBa"):
        return img.convert("RGBA" if mode != "P" else "RGB")
    if mode == "La":
        return img.convert("LA")
    if mode == "CMYK":
        return cmyk_to_rgb(img, source_format, done)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scale_to_8bit(img, done)
    try:
        return img.convert("RGB")
    except ValueError:
        raise ValueError(f"pixel mode {mode} is not supported") from None


def _scale_to_8bit(img: Image.Image, steps: list[str]) -> Image.Image:
    """Map 16/32-bit integer or float samples linearly onto 0-255 (``convert`` would clip).

    ``I;16*`` spans 0-65535. ``I`` holding only 0-65535 is 16-bit data in a 32-bit container
    (some TIFF and PNG readers do that); other ``I`` data and ``F`` outside 0-1 are stretched
    from min(0, lowest) to the highest value.
    """
    mode = img.mode
    if mode.startswith("I;16"):
        img = img.convert("I")
        low, high, step = 0.0, 65535.0, "16bit_scaled"
    else:
        lowest, highest = img.getextrema()
        assert not isinstance(lowest, tuple) and not isinstance(highest, tuple)  # I, F: one band
        if mode == "I" and lowest >= 0 and highest <= 65535:
            low, high, step = 0.0, 65535.0, "16bit_scaled"
        elif mode == "F" and lowest >= 0 and highest <= 1:
            low, high, step = 0.0, 1.0, "float_scaled"
        else:
            low, high = float(min(0, lowest)), float(highest)
            step = "32bit_scaled" if mode == "I" else "float_scaled"
    factor = 255.0 / (high - low) if high > low else 0.0
    offset = 0.5 - low * factor  # + 0.5 rounds instead of truncating
    steps.append(step)
    return img.point(lambda value: value * factor + offset).convert("L")


def flatten(img: Image.Image, steps: list[str] | None = None) -> Image.Image:
    """Composite transparent pixels onto white; returns L or RGB (other modes as they are).
    What was done is appended to ``steps`` when given."""
    if img.mode not in ("LA", "RGBA"):
        return img
    alpha = img.getchannel("A")
    opaque_mode = img.mode[:-1]
    if alpha.getextrema()[0] == 255:
        return img.convert(opaque_mode)
    background = Image.new(opaque_mode, img.size, 255 if opaque_mode == "L" else _WHITE)
    background.paste(img.convert(opaque_mode), mask=alpha)
    if steps is not None:
        steps.append("alpha->white")
    return background
