"""Faces of a video's sampled frames into tracks, each track judged from all its frames, and
the video judged from its tracks. Pure functions on boxes and probabilities: no model here.

Association (`build_tracks`), frame by frame in time order, greedy:
1. every open track against every face of the new frame by box IoU; pairs with IoU >=
   `min_iou` (0.3) are matched, best IoU first;
2. what is left, by centre distance relative to face size: the distance between the box
   centres divided by the mean side of the two boxes (sqrt of w*h), at most `max_shift`
   (1.0), and the two boxes' sides within a factor `max_size_ratio` (2) of each other;
   nearest first. Sampled frames are far apart (0.3 s at 32 samples over 10 s), so a moving
   face often no longer overlaps its last box. The allowance does not grow over a gap:
   splitting one face into two tracks costs less than merging two people into one (a fake
   face's mean would be diluted by a real one's);
3. a face left over starts a new track. A track not matched for more than `max_gap` (3)
   sampled frames in a row is closed: a face that comes back later is a new track.

Judging (`judge_video`), DFDC practice: a track's P(fake) is the mean of its frames' P(fake);
its share of fake frames is the fraction of them that `judge` calls "fake" (reported, not
used in the decision). The tracks that count are those with at least
`min_track_frames(sampled)` frames = max(3, 10 % of the frames sampled), capped at the frames
sampled: a face seen more briefly is not enough to judge a video by (a detector's stray box
on one frame must not accuse anyone). The most-fake counting track decides, against the bar
`threshold_for(n)` for n counting tracks (the image rule's bar raised with the number of
faces); no track that counts: no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Box = tuple[int, int, int, int]  # x, y, w, h

MIN_IOU = 0.3
MAX_SHIFT = 1.0
MAX_SIZE_RATIO = 2.0
MAX_GAP = 3
MIN_TRACK_FRAMES = 3
MIN_TRACK_SHARE = 0.1


@dataclass(frozen=True)
class Detection:
    """One face in one sampled frame, with the P(fake) the model gave its crop."""

    box: Box
    score: float
    p_fake: float


@dataclass(frozen=True)
class FrameDetections:
    time_s: float
    detections: tuple[Detection, ...]


@dataclass(frozen=True)
class TrackFrame:
    frame: int  # index into the frames given to build_tracks
    time_s: float
    box: Box
    score: float
    p_fake: float


@dataclass(frozen=True)
class Track:
    track_id: int
    frames: tuple[TrackFrame, ...]

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    @property
    def p_fake(self) -> float:
        """Mean P(fake) over the track's frames."""
        return sum(f.p_fake for f in self.frames) / len(self.frames)

    def share_fake(self, judge: Callable[[float], str]) -> float:
        """Fraction of the track's frames that `judge` (P(fake) -> "fake"/"real") calls fake."""
        return sum(judge(f.p_fake) == "fake" for f in self.frames) / len(self.frames)

    @property
    def start_s(self) -> float:
        return self.frames[0].time_s

    @property
    def end_s(self) -> float:
        return self.frames[-1].time_s


@dataclass(frozen=True)
class TrackRule:
    min_iou: float = MIN_IOU
    max_shift: float = MAX_SHIFT
    max_size_ratio: float = MAX_SIZE_RATIO
    max_gap: int = MAX_GAP


def iou(a: Box, b: Box) -> float:
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0) * max(height, 0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def centre_shift(a: Box, b: Box) -> float:
    """Distance between the centres over the mean side (sqrt of area) of the two boxes."""
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    side = (math.sqrt(max(a[2] * a[3], 1)) + math.sqrt(max(b[2] * b[3], 1))) / 2
    return math.hypot(dx, dy) / side


def _size_ratio(a: Box, b: Box) -> float:
    sa, sb = math.sqrt(max(a[2] * a[3], 1)), math.sqrt(max(b[2] * b[3], 1))
    return max(sa, sb) / min(sa, sb)


def build_tracks(frames: Sequence[FrameDetections], rule: TrackRule = TrackRule()) -> list[Track]:
    """Tracks of the faces in `frames` (sampled frames in time order), by first appearance."""
    tracks: list[list[TrackFrame]] = []
    open_tracks: list[int] = []  # indexes into tracks
    for index, frame in enumerate(frames):
        open_tracks = [t for t in open_tracks if index - tracks[t][-1].frame - 1 <= rule.max_gap]
        detections = list(frame.detections)
        matched: dict[int, int] = {}  # detection -> track
        taken: set[int] = set()

        def last_box(track: int) -> Box:
            return tracks[track][-1].box

        pairs = [(iou(last_box(t), d.box), t, k) for t in open_tracks for k, d in enumerate(detections)]
        for overlap, t, k in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
            if overlap < rule.min_iou:
                break
            if t not in taken and k not in matched:
                matched[k] = t
                taken.add(t)
        near = []
        for t in open_tracks:
            if t in taken:
                continue
            for k, d in enumerate(detections):
                if k in matched or _size_ratio(last_box(t), d.box) > rule.max_size_ratio:
                    continue
                shift = centre_shift(last_box(t), d.box)
                if shift <= rule.max_shift:
                    near.append((shift, t, k))
        for _, t, k in sorted(near):
            if t not in taken and k not in matched:
                matched[k] = t
                taken.add(t)
        for k, d in enumerate(detections):
            point = TrackFrame(index, frame.time_s, d.box, d.score, d.p_fake)
            if k in matched:
                tracks[matched[k]].append(point)
            else:
                tracks.append([point])
                open_tracks.append(len(tracks) - 1)
    return [Track(i, tuple(points)) for i, points in enumerate(tracks)]


# -- judging -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackVerdict:
    track: Track
    p_fake: float  # mean over its frames
    share_fake: float
    prediction: str  # judge(p_fake)
    counted: bool  # whether it took part in the video's verdict


@dataclass(frozen=True)
class VideoVerdict:
    prediction: str  # "fake" when the deciding track's P(fake) >= threshold
    p_fake: float  # the deciding (most-fake counted) track's P(fake)
    threshold: float  # threshold_for(counted tracks)
    deciding_track_id: int
    counted: int
    tracks: tuple[TrackVerdict, ...]


def min_track_frames(frames_sampled: int) -> int:
    """Frames a track needs to count: max(3, 10 % of the samples), at most the samples."""
    need = max(MIN_TRACK_FRAMES, math.ceil(MIN_TRACK_SHARE * frames_sampled))
    return max(1, min(need, frames_sampled))


def judge_video(
    tracks: Sequence[Track],
    frames_sampled: int,
    *,
    judge: Callable[[float], str],
    threshold_for: Callable[[int], float],
) -> VideoVerdict | None:
    """The video's verdict from its tracks (rule in the module docstring); None: no track counts.

    `judge(p_fake) -> "fake" | "real"` is the per-face verdict (ModelSpec's threshold);
    `threshold_for(n)` is the bar the most-fake of n faces must reach.
    """
    if not tracks:
        return None
    need = min_track_frames(frames_sampled)
    counting = {t.track_id for t in tracks if t.frame_count >= need}
    if not counting:
        return None
    verdicts = tuple(
        TrackVerdict(t, t.p_fake, t.share_fake(judge), judge(t.p_fake), t.track_id in counting)
        for t in tracks
    )
    deciding = max((v for v in verdicts if v.counted), key=lambda v: (v.p_fake, -v.track.track_id))
    threshold = threshold_for(len(counting))
    return VideoVerdict(
        prediction="fake" if deciding.p_fake >= threshold else "real",
        p_fake=deciding.p_fake,
        threshold=threshold,
        deciding_track_id=deciding.track.track_id,
        counted=len(counting),
        tracks=verdicts,
    )
