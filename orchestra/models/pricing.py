"""Cost in USD of a model call, from the maintained genai-prices table."""

from __future__ import annotations

from functools import lru_cache

from genai_prices import Usage as PriceUsage
from genai_prices import calc_price


@lru_cache(maxsize=512)
def _known(provider: str, model: str) -> bool:
    try:
        calc_price(
            PriceUsage(input_tokens=0, output_tokens=0), model_ref=model, provider_id=provider
        )
    except LookupError:
        return False
    return True


def cost_usd(provider: str, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """The price of one call, or None for a model the table does not know (local models)."""
    if not _known(provider, model):
        return None
    price = calc_price(
        PriceUsage(input_tokens=prompt_tokens, output_tokens=completion_tokens),
        model_ref=model,
        provider_id=provider,
    )
    return float(price.total_price)
