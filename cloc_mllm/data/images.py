"""Decoded images as every model here expects them: upright RGB, whatever the file held.

Real photographs arrive rotated by an EXIF tag (phones store the sensor's pixels and a flag), as
grayscale, palette or 16-bit images, or with an alpha channel. A box is only right on the image it was
drawn on, so every reader of images (evaluation, chat, VESL) goes through this module:

- :func:`upright_rgb`: EXIF orientation applied, as ``datasets``' Image feature, lmms-eval and image
  viewers do: the photo a person sees, on which new boxes (chat answers, VESL labels) are drawn;
- :func:`annotated_rgb`: for an annotation that records the image size, the frame that size belongs
  to: upright, unless only the stored pixels have that size (a tool that ignored the tag drew the boxes
  on them, as COCO-style exports often do). A flip or half turn keeps the size; then upright wins.

Transparency is composited over white (``convert("RGB")`` would show whatever colour sits under
transparent pixels, often black), 16-bit and float images are scaled to 8 bits by their own range, and
the EXIF/XMP blocks are dropped from the result, so no later reader turns the pixels again.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import ExifTags, Image, ImageOps

BACKGROUND = (255, 255, 255)
_ORIENTATION_INFO = ("exif", "xmp", "XML:com.adobe.xmp")


def has_rotation(image: Image.Image) -> bool:
    """True when the EXIF orientation tag asks for a flip or turn (tag present and not 1)."""
    return image.getexif().get(ExifTags.Base.Orientation, 1) != 1


def _flat_rgb(image: Image.Image) -> Image.Image:
    """RGB of ``image``'s pixels as they are, alpha over white, without orientation metadata."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        rgb = Image.alpha_composite(canvas, rgba).convert("RGB")
    elif image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grayscale: scale to 8 bits by the image's own range, not a clip at 255
        image = image.convert("F")
        low, high = image.getextrema()
        rgb = image.point(lambda v: (v - low) * 255.0 / max(high - low, 1e-12)).convert("L").convert("RGB")
    else:
        rgb = image.convert("RGB")
    for key in _ORIENTATION_INFO:
        rgb.info.pop(key, None)
    return rgb


def upright_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy with EXIF orientation applied and any alpha composited over white."""
    return _flat_rgb(ImageOps.exif_transpose(image))


def annotated_rgb(image: Image.Image, size: Sequence[int] | None = None) -> Image.Image:
    """The RGB image in the frame of an annotation of ``size`` = (width, height) (None or zeros:
    unknown, upright): the stored pixels when only they have that size, else upright."""
    upright = upright_rgb(image)
    if size and all(size) and tuple(upright.size) != tuple(size) and tuple(image.size) == tuple(size):
        return _flat_rgb(image)
    return upright
