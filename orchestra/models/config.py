"""``ModelConfig``: which model an agent uses, and the adapter built from it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_serializer,
    field_validator,
)

from orchestra.errors import ConfigurationError

from . import secrets
from .base import Model

ActionFormat = Literal["tools", "json_schema", "json_object", "text"]

_KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_DEFAULT_FORMATS: dict[str, ActionFormat] = {
    "openai": "tools",
    "anthropic": "tools",
    "local": "json_object",
}
_NO_SEED = {"anthropic": "the Anthropic Messages API"}
MAX_SEED = 2**32 - 2


class ModelConfig(BaseModel):
    """A model to use, by provider and name.

    * ``provider="openai"``: the OpenAI Chat Completions protocol — OpenAI itself, or any
      compatible server (vLLM, Ollama, llama.cpp's server, OpenRouter, Groq, Together,
      LM Studio) through ``base_url``. Needs ``pip install 'orchestra[openai]'``.
    * ``provider="anthropic"``: the Anthropic Messages API. Needs ``orchestra[anthropic]``.
    * ``provider="local"``: a GGUF model run in-process by llama.cpp; ``name="smollm2"`` is the
      bundled SmolLM2-135M-Instruct, any other name is a path to a ``.gguf`` file. Needs
      ``orchestra[local]``.

    ``api_key`` defaults to ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY``; a server given by
    ``base_url`` may need none. It is taken as a plain string and kept as a ``SecretStr``, so
    no ``str``, ``repr`` or log line shows it (``api_key.get_secret_value()`` gives it back),
    and it is left out of ``model_dump()`` and ``model_dump_json()``: a dump stored or printed
    holds no key, and one validated again falls back to the environment's. Credentials written
    into ``base_url`` (``https://user:password@host``, ``?key=...``) are shown as ``[REDACTED]``
    by ``repr`` and left out of dumps the same way; give the key as ``api_key`` instead.

    ``action_format`` says how the model states its decision: ``"tools"`` (native tool
    calls), ``"json_schema"`` (OpenAI-style structured output), ``"json_object"`` (a JSON
    object constrained by a schema, as llama.cpp's servers take it) or ``"text"`` (the JSON
    protocol in plain text, unconstrained). The default suits the provider: tools for openai
    and anthropic, json_object for local.

    ``stream`` (on by default) lets the model stream its reply while someone listens for
    replies as they are written (docs/models.md, "Streaming"); ``stream=False`` keeps it on
    plain requests even then, for a server whose streams fail or report no usage.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: Literal["openai", "anthropic", "local"]
    name: str = Field(min_length=1)
    base_url: str | None = None
    api_key: SecretStr | None = Field(default=None, exclude=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1)
    timeout: float = Field(default=60.0, gt=0)
    action_format: ActionFormat | None = None
    # strict: 7.0, "7" and True are mistakes, not seeds; 4294967295 is llama.cpp's "random"
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, strict=True)
    stream: bool = Field(default=True, strict=True)

    @field_validator("seed")
    @classmethod
    def _seed_is_taken(cls, seed: int | None, info: ValidationInfo) -> int | None:
        provider = info.data.get("provider")  # absent when it was itself invalid
        if seed is not None and provider in _NO_SEED:
            raise seed_refused(provider)
        return seed

    @field_serializer("base_url")
    def _base_url_without_credentials(self, base_url: str | None) -> str | None:
        """A dump keeps no credential, as it keeps no ``api_key``."""
        return secrets.url_without_credentials(base_url) if base_url else base_url

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """``base_url`` with its credentials shown as ``[REDACTED]``."""
        for name, value in super().__repr_args__():
            yield name, secrets.redact(value) if name == "base_url" and value else value

    @property
    def format(self) -> ActionFormat:
        return self.action_format or _DEFAULT_FORMATS[self.provider]

    def resolved_api_key(self) -> str:
        """The key to send; a ConfigurationError naming the variable when none is available.

        The key found is remembered, so any error text the adapter reports has it redacted.
        Whitespace around it (the newline of a key read from a file) is dropped; a key with
        a control character inside cannot be sent in a header, and is refused here rather
        than retried as a network failure.
        """
        variable = _KEY_VARIABLES.get(self.provider)
        given = self.api_key.get_secret_value() if self.api_key else None
        found = given or (os.environ.get(variable) if variable else None)
        if found:
            secrets.remember(found)
            key = found.strip()
            if not key.isprintable():
                where = "ModelConfig(api_key=...)" if given else variable
                raise ConfigurationError(
                    f"{self.provider} model {self.name!r}: the API key from {where} holds a "
                    "control character, which no HTTP header can carry"
                )
            return key
        if self.base_url:
            return "no-key-needed"
        raise ConfigurationError(
            f"{self.provider} model {self.name!r} has no API key: set {variable} or pass "
            "ModelConfig(api_key=...), or point base_url at a server that needs none"
        )

    def build(self) -> Model:
        """The adapter for this model (imports the provider's SDK only now)."""
        if self.provider == "openai":
            from .openai_chat import OpenAIChatModel

            return OpenAIChatModel(self)
        if self.provider == "anthropic":
            from .anthropic_messages import AnthropicModel

            return AnthropicModel(self)
        from .local import LocalModel

        return LocalModel(self)


def missing_extra(provider: str, package: str) -> ConfigurationError:
    return ConfigurationError(
        f"the {provider} provider needs the {package!r} package: pip install 'orchestra[{provider}]'"
    )


def seed_refused(provider: str) -> ConfigurationError:
    """A seed given to a provider whose API takes none: said, rather than silently ignored."""
    return ConfigurationError(
        f"ModelConfig.seed: {_NO_SEED[provider]} takes no seed, so provider={provider!r} "
        "cannot make its sampling repeatable with one; leave seed unset (temperature=0 gives "
        "the most repeatable replies it offers)"
    )
