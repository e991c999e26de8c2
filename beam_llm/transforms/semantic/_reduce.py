"""The LLM reduce behind SemanticReduce and SummarizePerKey: a Beam
CombineFn that collects a group's texts and reduces them in token-budgeted
rounds (as DocETL's reduce folds a group that does not fit), so no prompt
exceeds the budget. With a JSON Schema every call answers in it, and a
round's partial answers (JSON) are the next round's texts."""
import json
import math
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_llm.transforms.semantic import _asking

# Tokens kept free for the chat template's role markers, in chat mode.
CHAT_MARGIN = 32
_SEPARATOR = '\n\n'
_MAX_ROUNDS = 12
_SYSTEM = 'You summarize texts faithfully and concisely.'
_SYSTEM_JSON = ('You summarize texts faithfully and concisely. You answer with '
                'JSON only.')
_PARTIAL_NOTE = ('These texts are one part of a larger collection; your '
                 'summary will be combined with the summaries of the other '
                 'parts, so keep what matters for the whole.')


class Budget:
  """Counts and cuts tokens: with a tokenizer (loaded on the worker) or by
  characters."""
  def __init__(self, max_tokens: int, tokenizer: Optional[str], chars_per_token: float):
    self.max_tokens = max_tokens
    self._tokenizer_id = tokenizer
    self._chars_per_token = chars_per_token
    self._tokenizer = None

  def load(self):
    if self._tokenizer_id and self._tokenizer is None:
      from transformers import AutoTokenizer
      self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_id)

  def count(self, text: str) -> int:
    if self._tokenizer is not None:
      return len(self._tokenizer.encode(text, add_special_tokens=True))
    return math.ceil(len(text) / self._chars_per_token)

  def split(self, text: str, max_tokens: int) -> list:
    """`text` in pieces of at most `max_tokens` tokens each."""
    if self._tokenizer is None:
      size = max(1, int(max_tokens * self._chars_per_token))
      return [text[i:i + size] for i in range(0, len(text), size)] or ['']
    ids = self._tokenizer.encode(text, add_special_tokens=False)
    step = max(1, max_tokens - 4)  # Decoding and re-encoding may shift a little.
    return [self._tokenizer.decode(ids[i:i + step]) for i in range(0, len(ids), step)]


class Prompts:
  """The reduce's prompts; with a schema, they ask for JSON in it."""
  def __init__(self, instruction: str, chat: bool, schema: Optional[dict] = None,
               examples: str = ''):
    self._instruction = instruction
    self._examples = examples
    self._chat = chat
    self._system = _SYSTEM if schema is None else _SYSTEM_JSON
    self._answer = '' if schema is None else (
        '\n\nAnswer with one JSON object that follows this JSON Schema:\n' +
        json.dumps(schema, ensure_ascii=False))

  def user(self, texts: Sequence[str], partial: bool) -> str:
    note = _PARTIAL_NOTE + '\n\n' if partial else ''
    return (f'{self._examples}{self._instruction}\n\n{note}<texts>\n' + _SEPARATOR.join(texts) +
            '\n</texts>' + self._answer)

  def as_text(self, texts, partial) -> str:
    """The prompt as the model reads it (for counting)."""
    return self._system + '\n\n' + self.user(texts, partial)

  def prompt(self, texts, partial):
    return _asking.messages(self._system, self.user(texts, partial), self._chat)


class ReduceFn(beam.CombineFn):
  """Accumulates a group's texts; reduces them in token-budgeted rounds.

  Output per group: ('ok', answer, count), the answer a text or, with a
  schema, the parsed object; or ('failed', (msg, error_type), count).
  """
  def __init__(self, owner: str, asker: _asking.Asker, prompts: Prompts,
               budget: Budget, structured: bool):
    self._asker = asker
    self._prompts = prompts
    self._budget = budget
    self._structured = structured
    self._prompt_tokens = Metrics.distribution(f'beam_llm.{owner}', 'prompt_tokens')
    self._rounds = Metrics.distribution(f'beam_llm.{owner}', 'rounds')
    self._loaded = False

  def create_accumulator(self):
    return []

  def add_input(self, accumulator, text):
    accumulator.append(text)
    return accumulator

  def merge_accumulators(self, accumulators):
    return [t for acc in accumulators for t in acc]

  def extract_output(self, accumulator):
    count = len(accumulator)
    try:
      return ('ok', self._reduce(sorted(accumulator)), count)
    except _asking.Failed as exn:
      return ('failed', (str(exn), exn.error_type), count)

  def _reduce(self, texts: list):
    if not self._loaded:  # Not in setup: precombining needs no tokenizer.
      self._budget.load()
      self._loaded = True
    overhead = self._budget.count(self._prompts.as_text([], partial=True))
    room = self._budget.max_tokens - overhead
    # At most half the room (with slack, as token counts do not simply add
    # up), so every chunk holds at least two texts: each round at least
    # halves their number.
    cap = (room - 2 * self._budget.count(_SEPARATOR)) // 2 - 4
    if cap < 8:
      raise _asking.Failed(
          f'max_input_tokens leaves only {room} tokens for texts',
          'prompt_too_long')
    # Long inputs are split (nothing lost); a partial answer longer than the
    # cap (max_new_tokens is at most half the budget, but a re-tokenized
    # answer can count more) is cut to it.
    items = [p for t in texts for p in (
        self._budget.split(t, cap) if self._budget.count(t) > cap else [t])]
    for round_ in range(1, _MAX_ROUNDS + 1):
      chunks = self._pack(items)
      if len(chunks) == 1:
        self._rounds.update(round_)
        return self._ask([self._prompts.prompt(chunks[0], partial=False)])[0]
      answers = self._ask(
          [self._prompts.prompt(chunk, partial=True) for chunk in chunks])
      items = [
          t if self._budget.count(t) <= cap else self._budget.split(t, cap)[0]
          for t in (json.dumps(a, ensure_ascii=False) if self._structured else a
                    for a in answers)
      ]
    raise _asking.Failed(
        f'no single answer after {_MAX_ROUNDS} rounds (raise '
        'max_input_tokens or lower max_new_tokens)', 'no_progress')

  def _pack(self, items: list) -> list:
    """Greedy packing: each chunk's whole prompt fits the budget."""
    chunks, current = [], []
    for item in items:
      candidate = current + [item]
      if current and self._budget.count(
          self._prompts.as_text(candidate, partial=True)) > self._budget.max_tokens:
        chunks.append(current)
        candidate = [item]
      current = candidate
    return chunks + [current]

  def _ask(self, prompts: list) -> list:
    for p in prompts:
      text = p if isinstance(p, str) else '\n\n'.join(m['content'] for m in p)
      self._prompt_tokens.update(self._budget.count(text))
    if self._structured:
      return self._asker.answers(prompts)
    return self._asker.texts(prompts)
