"""Schema-constrained decoding for the HuggingFace backend, with llguidance.

llguidance (Rust, with Python bindings) compiles a JSON Schema into a grammar
over the tokenizer's vocabulary once per model load, and computes each step's
allowed-token mask natively. It needs neither Triton nor torch.compile, so
it sits in one environment with TensorFlow (keras-hub) without the LLVM
clash xgrammar's Triton dependency caused (issue 10; cost in
bench/RESULTS.md).
"""
from typing import List, Optional

import numpy as np

# No whitespace between tokens: a random or small model wanders off into
# endless whitespace otherwise, and compact JSON is cheaper to generate.
_JSON_OPTIONS = {'whitespace_flexible': False}


class JsonSchemaConstraint:
  """A JSON Schema compiled for one tokenizer; hands out logits processors."""
  def __init__(self, schema: dict, tokenizer, vocab_size: int,
               eos_token_ids: List[int]):
    import llguidance
    import llguidance.hf
    self._llguidance = llguidance
    self._tokenizer = llguidance.hf.from_tokenizer(
        tokenizer, n_vocab=vocab_size, eos_token=eos_token_ids)
    self._grammar = llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults=_JSON_OPTIONS)
    error = llguidance.LLMatcher.validate_grammar(self._grammar, self._tokenizer)
    if error:
      raise ValueError(f'GenerateText: response_schema cannot be used for '
                       f'constrained decoding: {error}')
    self._executor = llguidance.LLExecutor()
    self.vocab_size = vocab_size
    self.eos_token_ids = eos_token_ids

  def logits_processor(self) -> 'JsonLogitsProcessor':
    """A fresh processor: it holds per-row parser state for one generate call."""
    return JsonLogitsProcessor(self)

  def new_matcher(self):
    return self._llguidance.LLMatcher(self._tokenizer, self._grammar, log_level=0)

  def fill_masks(self, matchers, mask: np.ndarray) -> None:
    import llguidance.numpy
    llguidance.numpy.fill_next_token_bitmask_par(
        self._executor, [(m, i) for i, m in enumerate(matchers)], mask)


class JsonLogitsProcessor:
  """transformers LogitsProcessor: only tokens that keep the JSON valid.

  Called once per step with the whole batch (prompt + tokens so far). The
  first call sees only prompts; each later call first feeds every row's
  previous token to its parser. Rows that already ended (EOS, then padding)
  are left alone: generate discards their logits.
  """
  def __init__(self, constraint: JsonSchemaConstraint):
    self._constraint = constraint
    self._matchers: Optional[list] = None
    self._done: Optional[np.ndarray] = None

  def __call__(self, input_ids, scores):
    import torch
    c = self._constraint
    batch, width = scores.shape
    if self._matchers is None:
      self._matchers = [c.new_matcher() for _ in range(batch)]
      self._done = np.zeros(batch, dtype=bool)
    else:
      for i, token in enumerate(input_ids[:, -1].tolist()):
        if not self._done[i] and token in c.eos_token_ids:
          self._done[i] = True
        elif not self._done[i]:
          # A refused token leaves the matcher in its error state, whose
          # mask allows nothing but EOS: the row ends, cut off, and
          # ParseJSON reports it instead of passing invalid JSON on.
          self._matchers[i].consume_token(token)
    mask = np.zeros((batch, (c.vocab_size + 31) // 32), dtype=np.int32)
    c.fill_masks(self._matchers, mask)
    mask[self._done] = -1  # Finished rows: anything (their output is padding).
    allowed = np.unpackbits(mask.view(np.uint8), axis=1, bitorder='little')
    blocked = np.ones((batch, width), dtype=bool)
    n = min(width, c.vocab_size)
    blocked[:, :n] = allowed[:, :n] == 0
    return scores.masked_fill(torch.from_numpy(blocked).to(scores.device),
                              float('-inf'))


def compile_json_schema(schema: Optional[dict], tokenizer, config,
                        generation_config) -> Optional[JsonSchemaConstraint]:
  if not schema:
    return None
  eos = getattr(generation_config, 'eos_token_id', None)
  eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
  eos_ids = sorted({e for e in eos + [tokenizer.eos_token_id] if e is not None})
  # The logits' width: the model's vocabulary, which may be padded past
  # the tokenizer's.
  vocab_size = getattr(config, 'vocab_size', None) or len(tokenizer)
  return JsonSchemaConstraint(schema, tokenizer, vocab_size, eos_ids)
