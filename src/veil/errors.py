"""Exceptions that carry a message meant for the user, not a traceback."""


class VeilError(Exception):
    """Base class: anything veil raises on purpose has a message a user can act on."""


class ImageError(VeilError):
    """An input image cannot be used (truncated, empty, not an image, too large, ...).

    Stages catch it per image, record it as an error row for that key and go on.
    """


class DatasetError(VeilError):
    """A dataset root or file list cannot be read as a dataset."""


class FacesFileError(VeilError):
    """A faces file (paper JSON, COCO, Parquet) is malformed."""
