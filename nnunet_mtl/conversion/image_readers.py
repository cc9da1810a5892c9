"""Image readers shared by every input layout, and the registry that picks one per file.

Like nnU-Net's ``imageio/reader_writer_registry.py``: each reader class says which files it
can read (``can_read``); callers ask ``reader_for(path)`` and never test extensions
themselves. A new format is one class here plus one entry in ``READERS``.

Every reader returns SimpleITK images (one per channel) plus the geometry keys the file
really stores (a PNG stores none, a CR DICOM only the pixel spacing), so masks are only
compared on what both files know.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Type

import numpy as np
import SimpleITK as sitk

from nnunet_mtl.conversion import dicom_file, dicom_series
from nnunet_mtl.conversion.masks import DEFAULT_REL_TOL, GEOMETRY_KEYS, ConversionError, Geometry

DEFAULT_CLIP = (0.5, 98.5)
LUMA = dicom_file.LUMA  # ITU-R 601 luma weights for R, G, B
COLOUR_CHANNEL_NAMES = ("R", "G", "B")


@dataclass(frozen=True)
class ReadOptions:
    """How pixels are read: ``colour`` keeps RGB images as three channels (else one luma channel);
    ``clip_percentiles`` applies to grey 2D images only (radiograph convention)."""
    clip_percentiles: Optional[Sequence[float]] = DEFAULT_CLIP
    target_spacing: Optional[Sequence[float]] = None
    image_interpolation: str = "linear"
    rel_tol: float = DEFAULT_REL_TOL
    colour: bool = False


def clip_to_percentiles(arr: np.ndarray, percentiles: Optional[Sequence[float]]) -> np.ndarray:
    if percentiles is None:
        return arr
    lo_p, hi_p = float(percentiles[0]), float(percentiles[1])
    if not 0 <= lo_p < hi_p <= 100:
        raise ConversionError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {list(percentiles)}")
    finite = np.isfinite(arr)
    if not finite.any():
        return arr
    # percentiles of the finite pixels only, and NaN/inf left as they are: one NaN made both percentiles
    # NaN, every pixel NaN after np.clip, and the NaN check then counted the whole image
    lo, hi = np.percentile(arr[finite], [lo_p, hi_p])
    return np.where(finite, np.clip(arr, lo, hi), arr)


def _image_2d(arr: np.ndarray, spacing: Optional[Tuple[float, float]]) -> sitk.Image:
    img = sitk.GetImageFromArray(np.asarray(arr, np.float32))
    if spacing:
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    return img


class ImageReader:
    """One image format. ``kind`` is 'volume', '2d' or 'series' (all cases of a dataset share one)."""
    kind = "volume"
    extensions: Tuple[str, ...] = ()

    @classmethod
    def can_read(cls, path: str) -> bool:
        return os.path.isfile(path) and path.lower().endswith(cls.extensions)

    @classmethod
    def stem(cls, path: str) -> str:
        name = os.path.basename(path.rstrip(os.sep))
        low = name.lower()
        for ext in cls.extensions:
            if low.endswith(ext):
                return name[: -len(ext)]
        return name

    def is_colour(self, path: str) -> bool:
        return False

    def read(self, path: str, options: ReadOptions) -> Tuple[List[sitk.Image], Tuple[str, ...]]:
        """(one image per channel, geometry keys the file stores)."""
        raise NotImplementedError

    def geometry(self, path: str) -> Geometry:
        images, known = self.read(path, ReadOptions(clip_percentiles=None))
        return Geometry.of(images[0], known)

    def read_mask(self, path: str) -> Tuple[np.ndarray, Geometry]:
        """Stored mask values (no rescaling) and the geometry."""
        images, known = self.read(path, ReadOptions(clip_percentiles=None))
        return sitk.GetArrayFromImage(images[0]), Geometry.of(images[0], known)


class DicomSeriesReader(ImageReader):
    """A folder holding one 3D DICOM series (GDCM sorts slices, applies rescale slope/intercept)."""
    kind = "series"

    @classmethod
    def can_read(cls, path: str) -> bool:
        """Any folder: case discovery has already refused folders without a series (GDCM scans are slow)."""
        return os.path.isdir(path)

    @classmethod
    def stem(cls, path: str) -> str:
        return os.path.basename(path.rstrip(os.sep))

    def read(self, path, options):
        return [dicom_series.read_dicom_series(path)], GEOMETRY_KEYS


class DicomFileReader(ImageReader):
    """A single-frame 2D DICOM (CR/DX): rescaled, MONOCHROME1 inverted, pixel spacing kept."""
    kind = "2d"
    extensions = dicom_file.DICOM_EXTS

    @classmethod
    def can_read(cls, path: str) -> bool:
        return dicom_file.is_dicom_file(path)

    def read(self, path, options):
        arr, spacing = dicom_file.read_dicom_pixels(path)
        if options.colour:  # a grey DICOM inside a colour dataset: repeated, not clipped
            return [_image_2d(arr, spacing)] * 3, ("spacing",) if spacing else ()
        channels = [clip_to_percentiles(arr, options.clip_percentiles).astype(np.float32)]
        return [_image_2d(a, spacing) for a in channels], ("spacing",) if spacing else ()

    def read_mask(self, path):
        arr, spacing = dicom_file.read_dicom_mask(path)
        return np.asarray(arr), Geometry.of(_image_2d(np.zeros(np.shape(arr)[:2]), spacing),
                                            ("spacing",) if spacing else ())


class NaturalImageReader(ImageReader):
    """PNG, JPG, BMP and single-page TIFF (8 or 16 bit, grey or colour) via Pillow.

    Colour images give three channels (R, G, B; alpha ignored) when ``options.colour``, else one
    luma channel (0.299 R + 0.587 G + 0.114 B). No spacing is stored, so none is compared."""
    kind = "2d"
    extensions = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
    COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA")

    @staticmethod
    def _open(path: str):
        from PIL import Image
        try:
            im = Image.open(path)
        except (OSError, ValueError) as e:
            raise ConversionError(f"{path}: cannot read image ({e})") from None
        pages = getattr(im, "n_frames", 1)
        if pages > 1:
            im.close()
            raise ConversionError(f"{path}: multi-page image ({pages} pages); store one 2D image per file")
        return im

    def is_colour(self, path: str) -> bool:
        with self._open(path) as im:
            return im.mode in self.COLOUR_MODES

    def _pixels(self, path: str, colour: bool) -> List[np.ndarray]:
        try:
            with self._open(path) as im:
                if im.mode in self.COLOUR_MODES:
                    rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
                    return [rgb[..., c] for c in range(3)] if colour else [rgb @ LUMA]
                grey = np.asarray(im.convert("L") if im.mode == "LA" else im).astype(np.float32)
        except OSError as e:  # truncated or corrupt pixel data
            raise ConversionError(f"{path}: cannot read image ({e})") from None
        if grey.ndim != 2:
            raise ConversionError(f"{path}: expected a 2D image, got shape {grey.shape}")
        return [grey] * 3 if colour else [grey]

    def read(self, path, options):
        channels = self._pixels(path, options.colour)
        if not options.colour:  # grey images follow the radiograph convention; colour ones stay as stored
            channels = [clip_to_percentiles(channels[0], options.clip_percentiles)]
        return [_image_2d(a, None) for a in channels], ()

    def geometry(self, path):
        with self._open(path) as im:
            width, height = im.size
        return Geometry((width, height), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), frozenset())

    def read_mask(self, path):
        try:
            with self._open(path) as im:
                arr = np.asarray(im.convert("L") if im.mode == "LA" else im)
        except OSError as e:
            raise ConversionError(f"{path}: cannot read mask ({e})") from None
        if arr.ndim == 3:
            first = arr[..., 0]
            if any(not np.array_equal(first, arr[..., c]) for c in range(1, min(arr.shape[-1], 3))):
                raise ConversionError(f"{path}: a colour mask is not supported; masks must be single-channel "
                                      f"label images (store label values as grey levels)")
            arr = first
        return arr, Geometry.of(_image_2d(np.zeros(arr.shape[:2]), None), ())


class VolumeReader(ImageReader):
    """NIfTI, NRRD, MetaImage: anything SimpleITK reads, with its full geometry."""
    kind = "volume"
    extensions = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

    def read(self, path, options):
        try:
            return [sitk.ReadImage(path)], GEOMETRY_KEYS
        except RuntimeError:
            raise ConversionError(f"{path}: cannot read image (not a valid NIfTI/NRRD/MHA file?)") from None

    def header(self, path) -> sitk.ImageFileReader:
        """The file's header only (size, dimension, components, geometry), no pixels."""
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise ConversionError(f"{path}: cannot read image header (not a valid NIfTI/NRRD/MHA file?)") from None
        return reader

    def geometry(self, path):
        reader = self.header(path)
        return Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                        tuple(reader.GetDirection()))


READERS: Tuple[Type[ImageReader], ...] = (DicomSeriesReader, NaturalImageReader, VolumeReader, DicomFileReader)
SUPPORTED = "NIfTI/NRRD/MHA, PNG/JPG/BMP/TIFF, DICOM file or DICOM-series folder"


def find_reader(path: str) -> Optional[ImageReader]:
    """The first reader that can read ``path``, or None."""
    for cls in READERS:
        if cls.can_read(path):
            return cls()
    return None


def reader_for(path: str) -> ImageReader:
    reader = find_reader(path)
    if reader is None:
        raise ConversionError(f"{path}: unknown image format (supported: {SUPPORTED})")
    return reader


# ------------------------------------------------------------------- functions the other modules use
def file_stem(path: str) -> Optional[str]:
    """Case name of a supported image file or series folder; None for anything else (notes, CSVs)."""
    if os.path.isdir(path):
        return os.path.basename(path.rstrip(os.sep))
    reader = find_reader(path)
    return reader.stem(path) if reader else None


def image_kind(path: str) -> str:
    """'series' (DICOM folder), '2d' (PNG/JPG/BMP/TIFF/DICOM file) or 'volume'."""
    return reader_for(path).kind


def read_channels(path: str, options: ReadOptions = ReadOptions()) -> Tuple[List[sitk.Image], Tuple[str, ...]]:
    return reader_for(path).read(path, options)


def read_image(path: str, clip_percentiles=DEFAULT_CLIP) -> Tuple[sitk.Image, Tuple[str, ...]]:
    """(one grey SimpleITK image, geometry keys the file really stores): colour becomes luma."""
    images, known = read_channels(path, ReadOptions(clip_percentiles=clip_percentiles))
    return images[0], known


def read_geometry(path: str) -> Geometry:
    return reader_for(path).geometry(path)


def read_mask(path: str) -> Tuple[np.ndarray, Geometry]:
    return reader_for(path).read_mask(path)


def is_colour(path: str) -> bool:
    return reader_for(path).is_colour(path)
