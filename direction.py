"""Which classes a horizontal flip turns into one another, and so whether training may flip at all.

A mirrored "Pushing something from left to right" is "Pushing something from right to left", and a mirrored
clockwise rotation turns anticlockwise: flipping such a clip without changing its label teaches the model the
wrong class. `flip_policy` reads the class names: a class whose name holds a direction word (left/right,
leftward/rightward, clockwise/anticlockwise/counterclockwise, ...) is paired with the class whose name has the mirrored
word; flipping then swaps the label of each pair (mmaction2's flip_label_map does this for SSv2 with indices written
by hand; here the pairs come from the names, so any dataset gets them). A direction class without a mirrored
partner cannot be flipped correctly, so `auto` turns the flip off and says which classes made it do so.

Words are matched case-insensitively on word boundaries, also inside CamelCase names (RotatingClockwise).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

FLIP_MODES = ("auto", "on", "off")
_MIRROR = {
    "left": "right", "right": "left",
    "leftward": "rightward", "rightward": "leftward",
    "leftwards": "rightwards", "rightwards": "leftwards",
    "clockwise": "anticlockwise", "anticlockwise": "clockwise",
}
_SPELLINGS = {"counterclockwise": "anticlockwise"}  # one word for either spelling, so either finds its partner
_TOKEN = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _tokens(name: str) -> list[str]:
    """The lower-case words of a name, CamelCase split, each direction word in one spelling."""
    return [_SPELLINGS.get(t.lower(), t.lower()) for t in _TOKEN.findall(name)]


def mirrored_key(name: str) -> tuple[str, ...] | None:
    """The word sequence of `name` with each direction word mirrored; None when it has no direction word."""
    words = _tokens(name)
    if not any(w in _MIRROR for w in words):
        return None
    return tuple(_MIRROR.get(w, w) for w in words)


@dataclass(frozen=True)
class FlipPolicy:
    """Whether training flips clips horizontally, and the label each flipped class becomes."""

    enabled: bool
    swap: dict[int, int] = field(default_factory=dict)
    reason: str = ""

    def label_after_flip(self, label: int) -> int:
        return self.swap.get(int(label), int(label))


def flip_policy(class_names: Sequence[str], mode: str = "auto") -> FlipPolicy:
    """The flip for a dataset with these classes (in label order); see the module docstring.

    `auto`: flip, with the label swaps, unless a direction class has no mirrored partner; `on`: flip, swapping the
    pairs found (an unpaired direction class keeps its label: the caller chose to accept that); `off`: never flip."""
    if mode not in FLIP_MODES:
        raise ValueError(f"flip mode must be one of {', '.join(FLIP_MODES)}, got {mode!r}")
    if mode == "off":
        return FlipPolicy(False, reason="--hflip off")
    by_words: dict[tuple[str, ...], int] = {}
    for i, name in enumerate(class_names):
        by_words.setdefault(tuple(_tokens(name)), i)
    swap, unpaired = {}, []
    for i, name in enumerate(class_names):
        key = mirrored_key(name)
        if key is None:
            continue
        partner = by_words.get(key)
        if partner is None or partner == i:
            unpaired.append(name)
        else:
            swap[i] = partner
    pairs = "; ".join(f"{class_names[a]} <-> {class_names[b]}" for a, b in swap.items() if a < b)
    if unpaired and mode == "auto":
        shown = ", ".join(unpaired[:5]) + (", ..." if len(unpaired) > 5 else "")
        return FlipPolicy(False, reason=f"off: {len(unpaired)} class(es) name a direction without a mirrored "
                                        f"partner ({shown}); a flipped clip of them would carry a wrong label")
    reason = f"on, swapping {pairs}" if swap else "on (no class names a direction)"
    if unpaired:
        reason += f"; kept despite {len(unpaired)} unpaired direction class(es) (--hflip on)"
    return FlipPolicy(True, swap, reason)
