# Hand-written stubs for the Rust extension `llmedge._core`.
# tests/test_stubs.py and `python -m mypy.stubtest llmedge._core` keep them honest.

from typing import final

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
