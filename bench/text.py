"""Synthetic model output for the benchmarks."""

from __future__ import annotations

import random


def llm_like_pieces(count: int, seed: int = 7) -> list[str]:
    """Token-sized pieces of prose with sentence ends, list items and a code block."""
    rng = random.Random(seed)
    words = [
        "the",
        "stream",
        "of",
        "tokens",
        "arrives",
        "while",
        "every",
        "viewer",
        "waits",
        "for",
        "text",
        "to",
        "commit",
    ]
    pieces: list[str] = []
    while len(pieces) < count:
        kind = rng.random()
        if kind < 0.7:
            sentence = [" " + rng.choice(words) for _ in range(rng.randint(6, 18))]
            sentence[-1] += "."
            pieces.extend(sentence)
        elif kind < 0.85:
            pieces.extend(["\n", "-", " item", " " + rng.choice(words), "\n"])
        else:
            pieces.extend(
                ["\n```", "py\n"]
                + [f" x{i} = {i}" for i in range(rng.randint(5, 30))]
                + ["\n```\n"]
            )
    return pieces[:count]
