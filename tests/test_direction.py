"""direction.py: the label swaps a horizontal flip needs, found from class names, and when flipping is unsafe."""

from __future__ import annotations

import pytest

from direction import flip_policy, mirrored_key

SSV2_LIKE = ["Pushing something from left to right", "Pushing something from right to left",
             "Turning the camera left while filming something", "Turning the camera right while filming something",
             "Putting something on a surface", "Moving something and something away from each other"]


def test_mirrored_pairs_are_found_from_the_names() -> None:
    policy = flip_policy(SSV2_LIKE)
    assert policy.enabled and policy.swap == {0: 1, 1: 0, 2: 3, 3: 2}
    assert policy.label_after_flip(0) == 1 and policy.label_after_flip(4) == 4
    # CamelCase (the demo's rotations) and either spelling of anticlockwise
    demo = ["Appearing", "RotatingClockwise", "RotatingAnticlockwise", "RedToBlue", "BlueToRed"]
    assert flip_policy(demo).swap == {1: 2, 2: 1}
    assert flip_policy(["spin clockwise", "spin counterclockwise"]).swap == {0: 1, 1: 0}
    assert mirrored_key("Brightness") is None and mirrored_key("BlueToRed") is None  # "right" is not in "bright"


def test_a_direction_class_without_partner_turns_auto_flip_off() -> None:
    names = ["Swiping Left", "Swiping Right", "Sliding Two Fingers Left", "Thumb Up"]  # no "... Two Fingers Right"
    policy = flip_policy(names)
    assert not policy.enabled and "Sliding Two Fingers Left" in policy.reason
    forced = flip_policy(names, "on")  # the user's choice: pairs swapped, the unpaired class kept
    assert forced.enabled and forced.swap == {0: 1, 1: 0} and "unpaired" in forced.reason
    assert not flip_policy(names, "off").enabled
    assert flip_policy(["Archery", "Bowling"]).enabled  # UCF-101-like: nothing to swap, flip as usual
    with pytest.raises(ValueError, match="flip mode"):
        flip_policy(names, "sometimes")
