"""Whether an episode's video can carry its trajectory: the one rule training and the statistics share.

Training (:func:`datamodules.pipeline.episode_windows`) skips an episode whose video has fewer
frames than poses, or whose frame times drift from the poses' times by more than the window
tolerance; ``tools/dataset_stats.py`` must not count such an episode's hours as usable, or it
reports data that training then throws away. Both call :func:`video_problem`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from datamodules.episode import Trajectory


def video_problem(video_times: np.ndarray, traj: Trajectory, tolerance: float) -> Optional[tuple[str, str]]:
    """``(skip reason, detail)`` when the video cannot carry ``traj``, None when it can.

    ``video_times`` are the presentation times of the decoded frames in order (any origin);
    ``tolerance`` is the largest allowed drift in seconds (training uses its window tolerance).
    """
    if len(video_times) < len(traj):
        return "video_shorter_than_poses", f"{len(video_times)} frames for {len(traj)} poses"
    drift = float(np.abs((video_times[: len(traj)] - video_times[0]) - (traj.t - traj.t[0])).max())
    if drift > tolerance:
        return "frame_times_mismatch", f"frame times drift {drift:.3f}s from the poses' times"
    return None
