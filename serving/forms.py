"""The two kinds of upload form the public routes take, image and video: the upload policy
(serving/multipart.py) and the form's text fields, each parsed and every combination checked
in one place, before any work starts. The legacy routes and the Python client's routes (whose
body the edge checks before BentoML parses it) use the same kind, so a value refused on one
is refused on the other, with the same legacy 400."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from preprocessing import errors
from serving.multipart import FormPolicy, parse_bool, parse_number

Fields = dict[str, Any]  # a form's typed values, by field name (None: not given)
MAX_FRAMES_ASKED = 100_000  # `frames` above this is a typo, not a request (capped anyway)
FPS_RANGE = (0.001, 240.0)


def sampling(frames: int | None, fps: float | None, max_frames: int) -> tuple[int | None, float | None]:
    """A video request's `frames` and `fps`, checked together (one or the other: 400 for
    both) and `frames` capped at `max_frames` (`video.frames_sampled` says how many were taken)."""
    if frames is not None and fps is not None:
        raise errors.bad_request("Send 'frames' or 'fps', not both")
    if frames is not None and frames < 1:
        raise errors.bad_request("Form field 'frames' must be at least 1")
    if fps is not None and not fps > 0:
        raise errors.bad_request("Form field 'fps' must be more than 0")
    return (None if frames is None else min(int(frames), max_frames)), fps


@dataclass(frozen=True)
class FormKind:
    """One kind of upload form: what the body may be, and its fields' values."""

    name: Literal["image", "video"]
    policy: FormPolicy
    parse: Callable[[Mapping[str, str]], Fields]  # raises InputError (400) for any bad value

    def encode(self, fields: Mapping[str, str]) -> dict[str, str]:
        """The fields, parsed and written back as plain values (true/false, numbers), for a
        parser that is not ours (BentoML's, on the Python client's routes)."""
        values = self.parse(fields)
        return {
            name: ("true" if value else "false") if isinstance(value, bool) else str(value)
            for name, value in values.items()
            if value is not None
        }


def image_form(max_bytes: int) -> FormKind:
    def parse(fields: Mapping[str, str]) -> Fields:
        return {
            "require_face": parse_bool("require_face", fields.get("require_face")),
            "explain": parse_bool("explain", fields.get("explain")) or False,
        }

    return FormKind("image", FormPolicy(max_bytes, frozenset({"require_face", "explain"})), parse)


def form_kinds(settings: Any, spool_dir: Path) -> dict[str, FormKind]:
    """The image and video forms under `settings` (serving/settings.py), by the route table's
    form names; videos are spooled to `spool_dir`."""
    return {
        "image": image_form(settings.max_upload_bytes),
        "video": video_form(settings.video_max_bytes, settings.video_max_frames, spool_dir),
    }


def video_form(max_bytes: int, max_frames: int, spool_dir: Path) -> FormKind:
    """Videos stream to a temp file in `spool_dir` as they arrive (the decoder reads it there)."""

    def parse(fields: Mapping[str, str]) -> Fields:
        frames = parse_number("frames", fields.get("frames"), int, 1, MAX_FRAMES_ASKED)
        fps = parse_number("fps", fields.get("fps"), float, *FPS_RANGE)
        explain = parse_bool("explain", fields.get("explain")) or False
        frames, fps = sampling(None if frames is None else int(frames), fps, max_frames)
        return {"frames": frames, "fps": fps, "explain": explain}

    policy = FormPolicy(max_bytes, frozenset({"frames", "fps", "explain"}), spool_dir=spool_dir)
    return FormKind("video", policy, parse)
