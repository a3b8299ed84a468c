"""Faults of the client's making, each with its HTTP status and a stable error code.

`message` is the legacy `error` string; for MISSING_FILE and EMPTY_FILE it is the old backend's
exact wording, which its clients compare, and the explanation goes into `details`."""

from __future__ import annotations


class InputError(Exception):
    """An upload the service refuses. `status` is a 4xx; `code` is stable for clients."""

    def __init__(self, status: int, code: str, message: str, details: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers: dict[str, str] = {}


def missing_file(field: str = "file") -> InputError:
    return InputError(
        400, "MISSING_FILE", "No file provided", f"Send the file as the multipart form field '{field}'"
    )


def empty_file(details: str = "The uploaded file is empty") -> InputError:
    return InputError(400, "EMPTY_FILE", "No selected file", details)


def bad_request(message: str) -> InputError:
    return InputError(400, "BAD_REQUEST", message)


def file_too_large(limit: int) -> InputError:
    return InputError(413, "FILE_TOO_LARGE", f"The upload is larger than {limit} bytes")


def image_too_large(limit: int, size: tuple[int, int] | None = None) -> InputError:
    declared = f"{size[0]}x{size[1]} pixels" if size else "too many pixels"
    return InputError(413, "IMAGE_TOO_LARGE", f"The image declares {declared}; the limit is {limit} pixels")


def unsupported_format(allowed: tuple[str, ...]) -> InputError:
    return InputError(
        415, "UNSUPPORTED_FORMAT", f"The file is not an image in a supported format ({', '.join(allowed)})"
    )


def invalid_image(reason: str) -> InputError:
    return InputError(400, "INVALID_IMAGE", f"The image cannot be decoded: {reason}")


def no_face(crop_side: int) -> InputError:
    """A photo in which no face was found, answered without a verdict. `error` says what to do."""
    return InputError(
        422,
        "NO_FACE",
        "No face was found in the image, so it was not judged: crop the face (a square around it) "
        "and send the crop",
        f"An upload at most {crop_side} px on its longer side and about square is judged as a face "
        "crop, as it is; a larger one is a photo, judged by the faces found in it. Send the form "
        "field require_face=false for an answer that says no face was found instead of this error.",
    )
