"""Image formats told by their leading bytes, without decoding: light enough for any module.

The downloader refuses bodies that are no image (an HTML login page served as ``image/jpeg``);
preprocessing tells a file cut short (it starts like an image Pillow cannot open) from one that
never was an image.
"""

from __future__ import annotations

# Image formats by their leading bytes (the ftyp box of ISO base media files by its brands).
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
BMFF_BRANDS = {
    **dict.fromkeys((b"avif", b"avis"), "AVIF"),
    **dict.fromkeys(
        (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"),
        "HEIF",
    ),
}
# "BM" alone is too weak a signature: the size of the DIB header that follows must be a real one.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


def image_format(data: bytes) -> str | None:
    """The image format ``data`` starts like (``JPEG``, ``PNG``, ``GIF``, ``WEBP``, ``BMP``,
    ``TIFF``, ``AVIF``, ``HEIF``), or ``None``. Only the leading bytes are looked at: the image
    is not decoded (the preprocessing pool does that)."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    if data[4:8] == b"ftyp":
        # The major brand, then the compatible brands up to the end of the box.
        box_end = min(int.from_bytes(data[:4], "big"), len(data))
        brands = [data[8:12]] + [data[i : i + 4] for i in range(16, box_end - 3, 4)]
        for brand in brands:
            if brand in BMFF_BRANDS:
                return BMFF_BRANDS[brand]
    return None
