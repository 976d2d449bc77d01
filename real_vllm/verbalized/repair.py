"""Weight repair (docs/algorithms.md §6.2): the model's stated probabilities to a distribution.

Per item, :func:`repair_weight` reads what the model wrote (numbers, "0.3", "30%", "1/3"; anything
else weighs 0 and is noted). Per list, :func:`postprocess`: a list written in percent is read as
percentages, negatives become 0, values above 1 are clipped, duplicate texts are merged, items
below ``min_probability`` are dropped (keeping at least ``min_k_survivors``), and the survivors are
normalised and sorted.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

from real_vllm.verbalized.distribution import Distribution, Item
from real_vllm.verbalized.errors import VSParseError
from real_vllm.verbalized.options import ALL_ZERO_POLICIES, check_choice

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")
PERCENT = 100.0
# How much of a stated value, and of a candidate's text, a repair note quotes.
_SHOWN_VALUE_CHARS = 40
_SHOWN_TEXT_CHARS = 30


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_VALUE_CHARS else text[: _SHOWN_VALUE_CHARS - 3] + "..."


def _quote(text: str) -> str:
    return repr(text[:_SHOWN_TEXT_CHARS])


@dataclass(frozen=True)
class RepairRules:
    """The list-level options of :func:`postprocess`, checked once.

    - ``min_probability``: keep items whose stated (repaired) probability is >= it; if fewer
      than ``min_k_survivors`` pass, keep the ``min_k_survivors`` most probable instead.
    - ``all_zero``: when every weight is zero, missing or invalid: "uniform" draws uniformly
      (noted), "error" raises.
    """

    min_probability: float | None = None
    min_k_survivors: int = 1
    all_zero: str = "uniform"

    def __post_init__(self):
        check_choice(self.all_zero, "all_zero", ALL_ZERO_POLICIES)
        p = self.min_probability
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1):
            raise ValueError(f"min_probability must be a number in [0, 1], got {p!r}")
        n = self.min_k_survivors
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"min_k_survivors must be an integer >= 1, got {n!r}")


def repair_weight(value: Any) -> tuple[float | None, bool, str | None]:
    """Read one stated probability: (number or None, written as a percentage?, note or None).

    Numbers pass through; strings holding one number ("0.3", "30%", "p = 0.3", "1/3") are read;
    booleans, NaN, infinities (and numbers too large for a float), words and strings with
    several numbers are invalid (None, with a note). Range repairs (negatives, > 1) are
    list-level and happen in :func:`postprocess`.
    """
    if value is None:
        return None, False, "missing probability"
    if isinstance(value, bool):  # True is not a probability, though Python calls it 1
        return None, False, f"probability {value!r} is not a number"
    percent, note = False, None
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            fraction = _FRACTION.match(value)
            numbers = _NUMBER.findall(value)
            if fraction:
                den = float(fraction.group(2))
                if den == 0:
                    return None, False, f"probability {_show(value)} divides by zero"
                number, note = float(fraction.group(1)) / den, f"probability {_show(value)} read as a fraction"
            elif len(numbers) != 1:
                what = "no number" if not numbers else "several numbers"
                return None, False, f"probability {_show(value)} holds {what}"
            elif "%" in value:
                number, percent = float(numbers[0]) / PERCENT, True
                note = f"probability {_show(value)} read as a percentage"
            else:
                number, note = float(numbers[0]), f"probability {_show(value)} was a string"
        else:
            return None, False, f"probability of type {type(value).__name__} is not a number"
    except OverflowError:  # an int with hundreds of digits
        return None, False, f"probability {_show(value)} is too large for a float"
    if not math.isfinite(number):
        return None, False, f"probability {_show(value)} is not finite"
    return number, percent, note


def _dedup_key(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _repaired_weights(pairs: Sequence[tuple[str, Any]], repairs: list[str]) -> list[float]:
    """Each item's weight in [0, 1], after the per-item and the per-list rules."""
    read: list[tuple[float | None, bool]] = []
    for i, (_, weight) in enumerate(pairs):
        number, percent, note = repair_weight(weight)
        if note:
            repairs.append(f"item {i}: {note}")
        read.append((number, percent))
    # A list whose largest bare number is above 1 but at most 100 is written in percent: a model
    # that switches to percentages does so for the whole list, so "0.5" there means half a
    # percent, and reading it so keeps the list's ratios (docs/algorithms.md §6.2). Above 100 it
    # is no percentage either, and values above 1 are clipped instead.
    bare = [n for n, pct in read if n is not None and not pct]
    as_percent = bool(bare) and 1 < max(bare) <= PERCENT
    if as_percent:
        repairs.append("probabilities above 1 and at most 100: read the list as percentages")
    weights: list[float] = []
    for (text, _), (number, percent) in zip(pairs, read):
        if number is None:  # missing or invalid, noted above
            weights.append(0.0)
            continue
        if as_percent and not percent:
            number /= PERCENT
        if number < 0:
            repairs.append(f"{_quote(text)}: negative probability {number:g} set to 0")
            number = 0.0
        elif number > 1:
            repairs.append(f"{_quote(text)}: probability {number:g} clipped to 1")
            number = 1.0
        weights.append(number)
    return weights


def _normalised(items: list[list], all_zero: str, repairs: list[str]) -> list[Item]:
    """[text, weight, stated] rows -> Items summing to 1 exactly, sorted (ties in the model's order)."""
    total = math.fsum(it[1] for it in items)
    if total <= 0:
        if all_zero == "error":
            raise VSParseError("every probability is zero, missing or invalid")
        repairs.append("every probability is zero, missing or invalid: uniform weights")
        probs = [1.0 / len(items)] * len(items)
    else:
        probs = [it[1] / total for it in items]
    order = sorted(range(len(items)), key=lambda j: -probs[j])
    result = [Item(items[j][0], probs[j], items[j][2]) for j in order]
    # Normalisation can leave the sum 1 +- a few ulps; fold the residue into one item without
    # breaking the order: a surplus into the top item, a deficit into the last item that stays
    # >= the one after it (not into the top one: it may be tied with the second).
    residue = 1.0 - math.fsum(it.probability for it in result)
    if residue:
        j = 0
        if residue < 0:
            j = next((i for i in range(len(result) - 1, -1, -1)
                      if result[i].probability + residue >= (result[i + 1].probability if i + 1 < len(result) else 0.0)), 0)
        result[j] = Item(result[j].text, result[j].probability + residue, result[j].stated)
    return result


def postprocess(pairs: Sequence[tuple[str, Any]], *, k: int | None, rules: RepairRules) -> tuple[tuple[Item, ...], list[str]]:
    """(text, stated weight) pairs -> sorted Items summing to 1, and the repairs made, in words.

    Repair weights, merge duplicates, filter, normalise, sort; see :func:`parse_answer
    <real_vllm.verbalized.parse.parse_answer>` for the rules. ``k``: the number of items asked
    for; a different number is noted.
    """
    repairs: list[str] = []
    weights = _repaired_weights(pairs, repairs)

    # Duplicates: the same response listed twice carries the mass of both mentions.
    index: dict[str, int] = {}
    items: list[list] = []  # [text, weight, stated]
    for (text, stated), w in zip(pairs, weights):
        key = _dedup_key(text)
        if key in index:
            items[index[key]][1] += w
            repairs.append(f"duplicate text {_quote(text)} merged (probabilities added)")
        else:
            index[key] = len(items)
            items.append([text, w, stated])

    if k is not None and len(items) != k:
        repairs.append(f"asked for {k} items, got {len(items)}")

    floor, survivors = rules.min_probability, rules.min_k_survivors
    if floor is not None:
        kept = [it for it in items if it[1] >= floor]
        if len(kept) < min(survivors, len(items)):
            order = sorted(range(len(items)), key=lambda j: -items[j][1])  # stable: earlier first
            chosen = set(order[:survivors])
            kept = [it for j, it in enumerate(items) if j in chosen]
            repairs.append(f"fewer than {survivors} item(s) had probability >= {floor:g}; "
                           f"kept the {len(kept)} most probable")
        elif len(kept) < len(items):
            repairs.append(f"dropped {len(items) - len(kept)} item(s) with probability < {floor:g}")
        items = kept

    return tuple(_normalised(items, rules.all_zero, repairs)), repairs


def to_distribution(pairs: Sequence[tuple[str, Any]], *, notes: Sequence[str], reasoning: str | None,
                    raw: str | None, meta: dict, k: int | None, rules: RepairRules) -> Distribution:
    """The :class:`Distribution` of one answer's candidates; ``notes`` are the parser's repairs
    before the weights'. A :class:`VSParseError` here quotes ``raw``."""
    try:
        items, repairs = postprocess(pairs, k=k, rules=rules)
    except VSParseError as e:
        raise VSParseError(str(e), raw=raw) from None
    return Distribution(items, tuple(notes) + tuple(repairs), reasoning, raw, meta)
