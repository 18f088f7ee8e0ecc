# Hand-written stubs for the Rust extension `llmedge._core`.
# tests/test_stubs.py and `python -m mypy.stubtest llmedge._core` keep them honest.

from collections.abc import Mapping, Sequence
from typing import Any, final

__version__: str

# ---- tokens ---------------------------------------------------------------

@final
class Tokenizer:
    def __new__(cls, encoding: str) -> Tokenizer: ...
    @staticmethod
    def for_model(model: str) -> Tokenizer: ...
    @property
    def name(self) -> str: ...
    def count(self, text: str) -> int: ...

def count_tokens(text: str, model: str = "gpt-4o") -> int: ...

# ---- models, messages and cost ---------------------------------------------

def register_model(
    name: str,
    *,
    encoding: str,
    context_window: int,
    max_output_tokens: int | None = None,
    input_price: float = 0.0,
    output_price: float = 0.0,
    cached_input_price: float | None = None,
    kind: str = "chat",
) -> None: ...
def model_info(model: str) -> dict[str, Any]: ...
def list_models(kind: str | None = None) -> list[str]: ...
def count_messages(
    messages: Sequence[Mapping[str, Any]],
    model: str,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int: ...
def fit_messages(
    messages: Sequence[dict[str, Any]],
    model: str,
    *,
    max_tokens: int,
    strategy: str = "last",
    keep_system: bool = True,
    history_limit: int | None = None,
    allow_partial: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]: ...
def estimate_cost(
    model: str, input_tokens: int, output_tokens: int, *, cached_input_tokens: int = 0
) -> float: ...

@final
class CostTracker:
    def __new__(cls) -> CostTracker: ...
    def record(
        self, model: str, input_tokens: int, output_tokens: int, *, cached_input_tokens: int = 0
    ) -> float: ...
    def summary(self) -> dict[str, Any]: ...
    def reset(self) -> None: ...
