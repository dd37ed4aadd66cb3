"""The frame-counter check tells a frame that never came from one whose counter was unreadable."""

from __future__ import annotations

import pytest

from tests.media_check import check_counters_as_captured


def test_an_unreadable_counter_is_a_frame_that_arrived() -> None:
    # 4 frames in the run, all captured: the third arrived but its digits could not be read
    assert check_counters_as_captured([1, 2, None, 4], frames_in_run=3, captured=4) == 0


def test_a_frame_that_never_came_is_missing() -> None:
    with pytest.raises(AssertionError, match="1 frames missing, the camera skipped 0"):
        check_counters_as_captured([1, 2, 4], frames_in_run=3, captured=4)


def test_frames_the_camera_skipped_may_be_missing() -> None:
    assert check_counters_as_captured([1, 2, 4], frames_in_run=3, captured=3) == 1
