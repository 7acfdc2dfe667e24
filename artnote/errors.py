"""Errors a curator can act on. Library code raises these; only the CLI exits."""


class ArtnoteError(Exception):
    """Base class: the message is one line, shown as is by the CLI."""


class ConfigError(ArtnoteError):
    """A setting in artnote.toml, the environment or a flag is invalid."""


class ModelNotFoundError(ArtnoteError):
    """The model's weights are not on disk and cannot be fetched."""


class ModelError(ArtnoteError):
    """The model loaded but cannot be used as asked (family, quantization, device)."""


class AdapterError(ArtnoteError):
    """An adapter file is missing, malformed, or belongs to another base model."""


class ImageError(ArtnoteError):
    """One image cannot be read; the scan records the reason and goes on.

    `of_content`: the bytes themselves are at fault (corrupt, too large, not an image),
    so every file with those bytes would fail alike; False for what belongs to one path
    or one moment (cannot open the file, out of memory).
    """

    def __init__(self, message: str, *, of_content: bool = True) -> None:
        super().__init__(message)
        self.of_content = of_content


class CatalogError(ArtnoteError):
    """The catalog cannot be opened, migrated, or queried as asked."""


class NotFoundError(ArtnoteError):
    """An image, adapter or run named by the user does not exist."""


class NotScannableError(ArtnoteError):
    """The path exists but a scan cannot take it: not a folder, not an image file."""


class ConflictError(ArtnoteError):
    """A write based on a revision of an image that has since changed (another review,
    a new annotation): refused, so that nothing someone else wrote is overwritten."""


class RecordsError(ArtnoteError):
    """A file of collection records (or an option of its import) that cannot be imported:
    a missing key column, an empty or conflicting object number, a bad file name pattern."""
