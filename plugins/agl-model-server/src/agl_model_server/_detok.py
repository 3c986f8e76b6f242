"""Turning generated token ids into text: incremental decoding for streams, stop strings, and per-token text/bytes
for logprobs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TextAssembler", "TokenTexts"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {char: byte for byte, char in _bytes_to_unicode().items()}


class TokenTexts:
    """Per-token text and exact UTF-8 bytes (for ``logprobs``), cached by token id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        try:
            self._added = set(tokenizer.get_added_vocab().values())
        except Exception:
            self._added = set()
        self._cache: dict[int, tuple[str, bytes]] = {}

    def get(self, token_id: int) -> tuple[str, bytes]:
        """``(text, bytes)`` of one token; ``text`` has U+FFFD where the token holds part of a character."""
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._compute(token_id)
        return hit

    def _compute(self, token_id: int) -> tuple[str, bytes]:
        piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
        if piece is None:
            return "", b""
        if token_id in self._special or token_id in self._added:
            return piece, piece.encode("utf-8")
        if self._byte_level and all(c in _UNICODE_TO_BYTE for c in piece):
            raw = bytes(_UNICODE_TO_BYTE[c] for c in piece)
            return raw.decode("utf-8", errors="replace"), raw
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece byte fallback
            raw = bytes([int(piece[3:5], 16)])
            return raw.decode("utf-8", errors="replace"), raw
        text = self.tokenizer.decode([int(token_id)])
        return text, text.encode("utf-8")


class TextAssembler:
    """The text of one generated sequence, built token by token.

    ``add(ids)`` returns the text that can be sent now: decoding uses a sliding window of ids (so each step costs
    O(1), not O(length)), text ending in an incomplete UTF-8 character waits for the next token, and text that could
    be the start of a stop string waits until it is known not to be one. When a stop string appears, ``stopped`` is
    set, ``stop_reason`` names it, and the text ends before it (or after it with ``include_stop``).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        stop: Sequence[str] = (),
        include_stop: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.include_stop = include_stop
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.text = ""  # everything decoded so far (cut at a stop string once one is found)
        self.sent = 0  # how much of ``text`` has been handed out
        self.stopped = False
        self.stop_reason: str | None = None
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, ids: Sequence[int]) -> str:
        """Take new token ids; return the text to send now (possibly empty)."""
        if self.stopped:
            return ""
        self.token_ids.extend(ids)
        before = self._decode(self.token_ids[self._prefix : self._read])
        after = self._decode(self.token_ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            if after.startswith(before):
                new = after[len(before) :]
            else:  # the window's decoding changed (rare): fall back to decoding everything
                full = self._decode(self.token_ids)
                new = full[len(self.text) :] if full.startswith(self.text) else ""
            self._prefix, self._read = self._read, len(self.token_ids)
            self.text += new
            if self.stop:
                self._find_stop(len(self.text) - len(new))
        return self._release()

    def _find_stop(self, new_from: int) -> None:
        longest = max(len(s) for s in self.stop)
        start = max(0, new_from - longest + 1)
        best: tuple[int, str] | None = None
        for s in self.stop:
            at = self.text.find(s, start)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, s)
        if best is not None:
            at, s = best
            self.text = self.text[: at + len(s) if self.include_stop else at]
            self.stopped, self.stop_reason = True, s

    def _release(self) -> str:
        end = len(self.text)
        if self.stop and not self.stopped:
            # Hold back a tail that could still grow into a stop string.
            for s in self.stop:
                for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        out = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out

    def finish(self) -> str:
        """The sequence ended: return what was held back. Without a stop string the final text is exactly
        ``decode(token_ids)``."""
        if not self.stopped:
            full = self._decode(self.token_ids)
            if full.startswith(self.text):
                self.text = full
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out
