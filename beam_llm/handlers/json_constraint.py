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
      raise ValueError(f'response_schema cannot be used for '
                       f'constrained decoding: {error}')
    self._executor = llguidance.LLExecutor()
    self.vocab_size = vocab_size
    self.eos_token_ids = eos_token_ids

  def logits_processor(self, overlap: bool = False) -> 'JsonLogitsProcessor':
    """A fresh processor: it holds per-row parser state for one generate
    call. With `overlap`, pass `processor.prefetch` to generate as a
    stopping criterion too: each step's masks are then computed while the
    model runs its forward pass (worth it on a GPU, whose forward pass
    leaves the CPU free)."""
    return JsonLogitsProcessor(self, overlap)

  def new_matcher(self):
    return self._llguidance.LLMatcher(self._tokenizer, self._grammar, log_level=0)

  def fill_masks(self, matchers, mask) -> None:
    """Fills a (rows, words) int32 CPU tensor: one bit per allowed token,
    computed for all rows in parallel in llguidance's own threads (the GIL
    is released meanwhile)."""
    import llguidance.torch
    llguidance.torch.fill_next_token_bitmask_par(
        self._executor, [(m, i) for i, m in enumerate(matchers)], mask)


class JsonLogitsProcessor:
  """transformers LogitsProcessor: only tokens that keep the JSON valid.

  Called once per step with the whole batch (prompt + tokens so far). The
  first call sees only prompts; each later step first feeds every row's
  previous token to its parser. Rows that already ended (EOS, then padding)
  are left alone: generate discards their logits.

  The masks are packed bits (32 tokens per int32) on the CPU; they travel
  to the logits' device packed and are unpacked there, so a step moves
  rows x vocab / 8 bytes, not a boolean per token. With `overlap`,
  `prefetch` (a stopping criterion, which generate calls right after
  choosing each step's tokens and before the next forward pass) feeds the
  new tokens and starts the next masks in a thread; the processor then only
  waits for them.
  """
  def __init__(self, constraint: JsonSchemaConstraint, overlap: bool = False):
    self._constraint = constraint
    self._overlap = overlap
    self._matchers: Optional[list] = None
    self._done: Optional[np.ndarray] = None
    self._buffers: list = []  # Two, used in turn: one may still be copying.
    self._turn = 0
    self._pending = None  # The prefetch's future mask, when overlapping.

  def __call__(self, input_ids, scores):
    if self._matchers is None:
      batch = scores.shape[0]
      self._matchers = [self._constraint.new_matcher() for _ in range(batch)]
      self._done = np.zeros(batch, dtype=bool)
      mask = self._next_mask(None, scores.is_cuda)
    elif self._pending is not None:
      mask, self._pending = self._pending.result(), None
    else:
      mask = self._next_mask(input_ids[:, -1].tolist(), scores.is_cuda)
    return _apply(scores, mask.to(scores.device, non_blocking=True),
                  self._constraint.vocab_size)

  def prefetch(self, input_ids, scores, **kwargs):
    """StoppingCriteria: never stops a row; starts the next step's masks."""
    import torch
    if self._overlap and self._matchers is not None:
      tokens = input_ids[:, -1].tolist()  # Waits for this step's tokens.
      self._pending = _executor().submit(
          self._next_mask, tokens, input_ids.is_cuda)
    return torch.zeros(input_ids.shape[0], dtype=torch.bool,
                       device=input_ids.device)

  def _next_mask(self, tokens: Optional[list], pin: bool):
    import torch
    # The buffers are made under generate's inference mode, which is per
    # thread: the prefetch thread needs it too to write them.
    with torch.inference_mode():
      return self._fill_next_mask(tokens, pin)

  def _fill_next_mask(self, tokens: Optional[list], pin: bool):
    import torch
    c = self._constraint
    if tokens is not None:
      for i, token in enumerate(tokens):
        if not self._done[i] and token in c.eos_token_ids:
          self._done[i] = True
        elif not self._done[i]:
          # A refused token leaves the matcher in its error state, whose
          # mask allows nothing but EOS: the row ends, cut off, and
          # ParseJSON reports it instead of passing invalid JSON on.
          self._matchers[i].consume_token(token)
    if not self._buffers:
      shape = (len(self._matchers), (c.vocab_size + 31) // 32)
      self._buffers = [torch.zeros(shape, dtype=torch.int32, pin_memory=pin)
                       for _ in range(2)]
    mask = self._buffers[self._turn]
    self._turn = 1 - self._turn
    c.fill_masks(self._matchers, mask)
    mask[torch.from_numpy(self._done)] = -1  # Finished rows: anything.
    return mask


def _apply(scores, mask, vocab_size: int):
  """-inf for every token whose bit is 0 in `mask` (rows x words int32, on
  the scores' device), and for logits past the tokenizer's vocabulary."""
  import torch
  batch, width = scores.shape
  shifts = torch.arange(32, dtype=torch.int32, device=scores.device)
  allowed = ((mask.unsqueeze(-1) >> shifts) & 1).view(batch, -1).bool()
  n = min(width, vocab_size, allowed.shape[1])
  blocked = torch.ones((batch, width), dtype=torch.bool, device=scores.device)
  blocked[:, :n] = ~allowed[:, :n]
  return scores.masked_fill(blocked, float('-inf'))


_EXECUTOR = None


def _executor():
  """One thread per process computes prefetched masks (the work itself runs
  in llguidance's thread pool)."""
  global _EXECUTOR  # pylint: disable=global-statement
  if _EXECUTOR is None:
    from concurrent.futures import ThreadPoolExecutor
    _EXECUTOR = ThreadPoolExecutor(1, thread_name_prefix='beam_llm-masks')
  return _EXECUTOR


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
