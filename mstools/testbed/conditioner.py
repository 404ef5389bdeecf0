"""Word-level text conditioner for the testbed, on audiocraft's conditioner API.

Each prompt is lower-cased, split on whitespace and punctuation, and mapped word by word to ids of a
fixed vocabulary (:data:`mstools.testbed.music.VOCABULARY`). An unknown word raises ``ValueError``
(there is no UNK id: the model never saw one in training, so a silent UNK would be a guess).

Every prompt is padded to exactly ``slots`` word positions. audiocraft's cross-attention has no
padding mask, so the padding positions are attended to; with a fixed number of slots a prompt's
condition tensor, and so the model's activations, never depend on the other prompts in its batch.
Padding slots (and the whole null condition, text ``None``, used by classifier-free guidance) are
zero vectors with mask 0.

Example:

>>> cond = WordConditioner(output_dim=16)
>>> tokens, mask = cond.tokenize(["fast rock with brass", None])
>>> tokens.shape, mask.tolist()[1]
(torch.Size([2, 8]), [0, 0, 0, 0, 0, 0, 0, 0])
>>> emb, mask = cond((tokens, mask))          # emb [2, 8, 16]; row 1 is all zeros
"""
from __future__ import annotations

import re
import typing as tp

import torch
from torch import nn
from audiocraft.modules.conditioners import ConditionType, TextConditioner

from mstools.testbed.music import VOCABULARY

__all__ = ["WordConditioner", "PAD_ID", "DEFAULT_SLOTS"]

PAD_ID = 0
DEFAULT_SLOTS = 8
_SPLIT = re.compile(r"[^a-z0-9]+")


class WordConditioner(TextConditioner):
    """Look-up-table text conditioner with a closed vocabulary and fixed word slots.

    Args:
        output_dim: dimension of the condition vectors (the LM's ``dim``).
        dim: dimension of the word embeddings (projected to ``output_dim``).
        slots: number of word positions every prompt is padded to.
        vocabulary: known words; id 0 is reserved for padding, word ``i`` gets id ``i + 1``.

    ``tokenize(list[str | None]) -> (tokens [B, slots] long, mask [B, slots] int)``;
    ``forward((tokens, mask)) -> (condition [B, slots, output_dim], mask [B, slots])``.
    """

    def __init__(self, output_dim: int, dim: int = 32, slots: int = DEFAULT_SLOTS,
                 vocabulary: tp.Sequence[str] = VOCABULARY):
        super().__init__(dim, output_dim)
        self.slots = int(slots)
        self.vocabulary = tuple(vocabulary)
        self.word_to_id = {w: i + 1 for i, w in enumerate(self.vocabulary)}
        self.embed = nn.Embedding(len(self.vocabulary) + 1, dim)

    def words(self, text: str) -> list[str]:
        """Lower-cased words of ``text`` (split on anything but letters and digits)."""
        return [w for w in _SPLIT.split(text.lower()) if w]

    def tokenize(self, x: tp.List[tp.Optional[str]]) -> tp.Tuple[torch.Tensor, torch.Tensor]:
        device = self.embed.weight.device
        tokens = torch.full((len(x), self.slots), PAD_ID, dtype=torch.long)
        for row, text in enumerate(x):
            if text is None:
                continue
            words = self.words(text)
            unknown = [w for w in words if w not in self.word_to_id]
            if unknown:
                raise ValueError(f"unknown word(s) {unknown} in prompt {text!r}; "
                                 f"the testbed knows: {', '.join(self.vocabulary)}")
            if len(words) > self.slots:
                raise ValueError(f"prompt {text!r} has {len(words)} words; at most {self.slots} fit")
            tokens[row, : len(words)] = torch.tensor([self.word_to_id[w] for w in words], dtype=torch.long)
        mask = (tokens != PAD_ID).int()
        return tokens.to(device), mask.to(device)

    def forward(self, inputs: tp.Tuple[torch.Tensor, torch.Tensor]) -> ConditionType:
        tokens, mask = inputs
        embeds = self.output_proj(self.embed(tokens))
        return embeds * mask.unsqueeze(-1), mask
