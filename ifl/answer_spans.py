"""Which tokens of a rendered conversation are trained: the one rule that the miniature's LM
pretraining (ifl/mini/lm.py) and LLaVA training (ifl/train/data.py) share, so both mask alike.

A conversation comes as (text, trained) pieces (`ifl.prompts.segments`). It is joined and
tokenised in one go, as at inference (tokenising piece by piece would give other tokens at the
seams); a token is trained iff its first character lies inside a trained piece. Tokens the
tokenizer adds itself (BOS) have an empty character span and are never trained.

>>> text, spans = join_pieces([("USER: Hi? ", False), ("ASSISTANT:", False), (" Yes.", True)])
>>> text[spans[0][0]:spans[0][1]]
' Yes.'
>>> trained_tokens([(0, 0), (0, 5), (20, 24), (24, 25)], spans).tolist()
[False, False, True, True]
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE = -100  # label of tokens outside the loss (the ignore_index of torch's cross-entropy)


def join_pieces(pieces: Sequence[tuple[str, bool]]) -> tuple[str, list[tuple[int, int]]]:
    """(the conversation's text, the character spans [start, end) of its trained pieces)."""
    text, spans, pos = "", [], 0
    for piece, is_trained in pieces:
        if is_trained:
            spans.append((pos, pos + len(piece)))
        text += piece
        pos += len(piece)
    return text, spans


def trained_tokens(offsets, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Boolean per token: its first character lies in a trained span. offsets: the tokenizer's
    (start, end) character offsets, one pair per token."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    start, end = offsets[:, 0], offsets[:, 1]
    trained = np.zeros(len(offsets), dtype=bool)
    for a, b in spans:
        trained |= (start >= a) & (start < b)
    return trained & (end > start)


def labels_of(ids: Sequence[int], offsets, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Labels for next-token loss: the token id where trained, IGNORE elsewhere."""
    return np.where(trained_tokens(offsets, spans), np.asarray(ids, dtype=np.int64), IGNORE)
