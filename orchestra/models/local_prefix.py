"""Prompt prefixes of the in-process model kept between calls, without a reply ever depending
on the calls before it.

llama.cpp's own reuse of its cache evaluates the part of a prompt that the previous prompt
shared in whatever batch the previous call evaluated it, and a prompt evaluated in other
batches gives slightly different logits (greedy decoding then writes another reply). Here the
batches depend on the prompt alone: it is cut after each end-of-turn token (each chat message
the template rendered), and each whole turn is evaluated as one batch, from the state after the
turns before it; what follows the last turn (the reply's header) is evaluated by llama.cpp as
one batch from there. The state after a turn is a function of the tokens up to it, so a state
kept from an earlier call is the state this call would have computed: restoring it skips that
part of the prompt and changes no logit. A fresh model and a warm one evaluate the same
batches from the same states.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

STATE_BYTES = 64 * 1024 * 1024  # about 2,800 tokens of SmolLM2-135M's states (23 KB a token)
_SEQUENCE = 0  # the one sequence Llama evaluates


class PrefixStates:
    """The model's states after the turns of recent prompts, least recently used first out,
    at most ``budget`` bytes of them. Used only by the caller holding the model's lock."""

    def __init__(self, model: Any, budget: int = STATE_BYTES) -> None:
        self._model = model
        self._budget = budget
        self._states: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._size = 0

    def prepare(self, tokens: Sequence[int]) -> None:
        """Leave the model holding the state after the prompt ``tokens``' last whole turn (an
        empty context when it has none), restored from a kept state where one matches and
        evaluated turn by turn from there: llama.cpp then finds that prefix in its cache and
        evaluates only the rest of the prompt."""
        cuts = self._cuts(tokens)
        start = self._restore(tokens, cuts)
        for end in cuts:
            if end > start:
                self._model.eval(tokens[start:end])
                start = end
                if end in (cuts[0], cuts[-1]):  # the system prompt; the conversation so far
                    self._keep(tuple(tokens[:end]))

    def _cuts(self, tokens: Sequence[int]) -> list[int]:
        """Where the prompt's turns end: after each end-of-generation token, before its last
        token (there must be something left to evaluate for the reply's logits)."""
        vocab = self._model._model.vocab
        ends = {token for token in set(tokens) if _is_end(vocab, token)}
        return [index + 1 for index, token in enumerate(tokens[:-1]) if token in ends]

    def _restore(self, tokens: Sequence[int], cuts: list[int]) -> int:
        """How much of the prompt a kept state covers, that state restored (the context
        emptied when none does)."""
        self._model.reset()
        self._model._ctx.kv_cache_seq_rm(_SEQUENCE, 0, -1)
        for cut in reversed(cuts):
            key = tuple(tokens[:cut])
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
                self._load(key, state)
                return cut
        return 0

    def _load(self, prefix: tuple[int, ...], state: bytes) -> None:
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if not _llama().llama_state_seq_set_data(
            self._model._ctx.ctx, buffer, len(state), _SEQUENCE
        ):
            raise RuntimeError("llama.cpp could not restore a kept prompt state")
        self._model.input_ids[: len(prefix)] = prefix
        self._model.n_tokens = len(prefix)

    def _keep(self, prefix: tuple[int, ...]) -> None:
        if prefix in self._states:
            self._states.move_to_end(prefix)
            return
        ctx, llama = self._model._ctx.ctx, _llama()
        size = llama.llama_state_seq_get_size(ctx, _SEQUENCE)
        if size > self._budget:
            return
        buffer = (ctypes.c_uint8 * size)()
        written = llama.llama_state_seq_get_data(ctx, buffer, size, _SEQUENCE)
        self._states[prefix] = bytes(buffer)[:written]
        self._size += written
        while self._size > self._budget:
            self._size -= len(self._states.popitem(last=False)[1])


def _is_end(vocab: Any, token: int) -> bool:
    return bool(_llama().llama_vocab_is_eog(vocab, token))


def _llama() -> Any:
    """llama.cpp's C API (imported only once a local model is loaded: it is an extra)."""
    import llama_cpp

    return llama_cpp
