"""The model an agent gets when its workflow names none.

In order: ``ORCHESTRA_MODEL`` (``provider:name``, e.g. ``openai:gpt-4o-mini``,
``anthropic:claude-3-5-haiku-latest``, ``local:smollm2`` or ``local:/path/model.gguf``) with
``ORCHESTRA_BASE_URL`` for an OpenAI-compatible server; else OpenAI when ``OPENAI_API_KEY`` is
set; else Anthropic when ``ANTHROPIC_API_KEY`` is set; else the bundled offline model — so a
fresh checkout runs with no network and no key. The configs set no temperature and no seed: the
provider's own defaults apply, which for a ``local`` model are temperature 0 and seed 42
(``orchestra.models.local``), so the demo on the bundled model repeats itself exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from orchestra.errors import ConfigurationError

from .config import ModelConfig

OPENAI_DEFAULT = "gpt-4o-mini"
ANTHROPIC_DEFAULT = "claude-3-5-haiku-latest"
LOCAL_DEFAULT = "smollm2"


def default_model_config(
    environ: Mapping[str, str] | None = None, max_tokens: int | None = None
) -> ModelConfig:
    env = os.environ if environ is None else environ
    base_url = env.get("ORCHESTRA_BASE_URL") or None
    chosen = env.get("ORCHESTRA_MODEL", "").strip()
    if chosen:
        provider, _, name = chosen.partition(":")
        if provider not in ("openai", "anthropic", "local") or not name:
            raise ConfigurationError(
                f"ORCHESTRA_MODEL={chosen!r} must be provider:name with provider openai, "
                "anthropic or local (e.g. openai:gpt-4o-mini, local:smollm2)"
            )
        return ModelConfig(provider=provider, name=name, base_url=base_url, max_tokens=max_tokens)  # type: ignore[arg-type]
    if base_url:
        return ModelConfig(
            provider="openai", name="default", base_url=base_url, max_tokens=max_tokens
        )
    if env.get("OPENAI_API_KEY"):
        return ModelConfig(provider="openai", name=OPENAI_DEFAULT, max_tokens=max_tokens)
    if env.get("ANTHROPIC_API_KEY"):
        return ModelConfig(provider="anthropic", name=ANTHROPIC_DEFAULT, max_tokens=max_tokens)
    return ModelConfig(provider="local", name=LOCAL_DEFAULT, max_tokens=max_tokens)
