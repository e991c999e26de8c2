"""SummarizePerKey: an LLM reduce, as a Beam combine (so windows work too)."""
import math
import typing
from typing import Any, Mapping, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import row_type

from beam_llm import _config
from beam_llm import _rows
from beam_llm.handlers.base import GenerationFailure
from beam_llm.transforms.semantic import _options

_OWNER = 'SummarizePerKey'
# Tokens kept free for the chat template's role markers, in chat mode.
_CHAT_MARGIN = 32
_SEPARATOR = '\n\n'
_MAX_ROUNDS = 12
_SYSTEM = 'You summarize texts faithfully and concisely.'
_DEFAULT_INSTRUCTION = 'Summarize the texts below in one short paragraph.'
_PARTIAL_NOTE = ('These texts are one part of a larger collection; your '
                 'summary will be combined with the summaries of the other '
                 'parts, so keep what matters for the whole.')


@_options.inherits_generate_options
class SummarizePerKey(beam.PTransform):
  """Summarizes all the rows of each key into one row (an LLM reduce).

  Rows are grouped by the `group_by` field(s) with a Beam combine, so this
  works per window on streaming input too (window the input first, e.g.
  `windowing: {type: fixed, size: 1d}`, for a daily summary). Each group's
  texts are summarized in one model call when they fit in
  `max_input_tokens`; a bigger group is summarized in rounds: its texts
  (a text longer than half the budget is split first) are packed into
  chunks that each fit the budget, each chunk is summarized, and the
  summaries are packed and summarized again until one call covers
  everything. No call's prompt exceeds the budget.

  Tokens are counted with the model's tokenizer for the HuggingFace backend
  (or `tokenizer`), otherwise estimated as `chars_per_token` characters per
  token. Texts are taken in sorted order, so a run is repeatable.

  Output: one row per key (and window) with the `group_by` fields, the
  summary in `output` and the number of rows summarized in `count_output`.
  A group whose model call fails goes to the error output as one error row
  whose `element` holds the key fields and the count. The group's texts are
  held in memory until it is summarized.

  Args:
    group_by: The field, or list of fields, whose values form the key.
    field: The input field holding the text to summarize.
    instruction: What the summary should say, e.g. `Summarize what made
      these customers unhappy, most common problems first.` Defaults to a
      short generic summary.
    output: Name of the field that receives the summary. Defaults to
      `summary`.
    count_output: Name of the field that receives the number of rows
      summarized. Defaults to `count`.
    max_input_tokens: The most tokens one prompt may have (the model's
      context minus `max_new_tokens`, or less). Must leave room for at least
      two summaries per call. Defaults to 2048.
    tokenizer: A HuggingFace tokenizer (hub id or directory) to count
      tokens with. Defaults to the model's for the HuggingFace backend.
    chars_per_token: Characters per token for estimating prompt sizes when
      no tokenizer is used. Defaults to 3 (conservative for English).
    chat: Send prompts as system + user chat messages; false sends one text
      prompt. Defaults to true.
    error_handling: `{output: <name>}` sends groups whose summary fails to
      that output as error rows instead of failing the pipeline.
  """
  def __init__(
      self,
      group_by: Union[str, Sequence[str]],
      field: str,
      instruction: Optional[str] = None,
      output: str = 'summary',
      count_output: str = 'count',
      max_input_tokens: int = 2048,
      tokenizer: Optional[str] = None,
      chars_per_token: float = 3.0,
      chat: bool = True,
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    self._keys = [group_by] if isinstance(group_by, str) else list(group_by)
    if not self._keys:
      _config.fail(_OWNER, 'group_by', 'names no field')
    self._field = field
    self._output = output
    self._count_output = count_output
    if chars_per_token <= 0:
      _config.fail(_OWNER, 'chars_per_token', 'must be positive')
    max_new = generate_options.get('max_new_tokens', 256)
    margin = _CHAT_MARGIN if chat else 0
    if max_input_tokens < 2 * max_new + margin + 64:
      _config.fail(
          _OWNER, 'max_input_tokens',
          f'({max_input_tokens}) must leave room for two summaries of '
          f'max_new_tokens ({max_new}) and the instructions: give at least '
          f'{2 * max_new + margin + 64}')
    generate = _options.generate_text(_OWNER, generate_options, 'prompt',
                                      'response', None)
    spec = generate_options['model_handler']
    if tokenizer is None and spec.get('type') == 'HuggingFace':
      config = spec.get('config') or {}
      tokenizer = config.get('tokenizer') or config.get('model')
    batch = getattr(_options.handler_of(generate), 'batch', None)
    if batch is not None and batch.batch_api:  # Rounds feed on answers.
      _config.fail(_OWNER, 'model_handler.config.batch_api',
                   'is not supported here: summaries are made in rounds, '
                   'each on the answers of the last, one model call at a time')
    self._generate = generate
    self._fn = _SummarizeFn(
        _options.handler_of(generate),
        _Prompts(instruction or _DEFAULT_INSTRUCTION, chat),
        _Budget(max_input_tokens - margin, tokenizer, chars_per_token),
        generate_options.get('max_batch_size') or 8)
    self._error_output = _config.error_output_name(_OWNER, error_handling)

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    for i, key in enumerate(self._keys):
      _rows.require_field(_OWNER, 'group_by', key, fields)
    _rows.require_field(_OWNER, 'field', self._field, fields)
    _options.handler_of(self._generate).check_at_build()
    types = dict(fields) if fields is not None else {}
    key_fields = [(k, types.get(k, Any)) for k in self._keys]
    out_type = row_type.RowTypeConstraint.from_fields(
        key_fields + [(self._output, str), (self._count_output, int)])
    keys, field = self._keys, self._field
    # Typed keys: the grouping needs a deterministic coder for them.
    key_type = typing.Tuple[tuple(t for _, t in key_fields)]
    summaries = (
        pcoll
        | 'KeyAndText' >> beam.Map(
            lambda row: (tuple(getattr(row, k) for k in keys),
                         _text(getattr(row, field)))).with_output_types(
                             typing.Tuple[key_type, str])
        | 'Summarize' >> beam.CombinePerKey(self._fn))
    return _rows.split_outputs(
        summaries,
        'ToRows',
        _ToRowsDoFn(self._keys, self._output, self._count_output),
        out_type,
        self._error_output,
        element_type=row_type.RowTypeConstraint.from_fields(
            key_fields + [(self._count_output, int)]))


def _text(value) -> str:
  return '' if value is None else str(value)


class _Budget:
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


class _Prompts:
  def __init__(self, instruction: str, chat: bool):
    self._instruction = instruction
    self._chat = chat

  def user(self, texts: Sequence[str], partial: bool) -> str:
    note = _PARTIAL_NOTE + '\n\n' if partial else ''
    return (f'{self._instruction}\n\n{note}<texts>\n' + _SEPARATOR.join(texts) +
            '\n</texts>')

  def as_text(self, texts, partial) -> str:
    """The prompt as the model reads it (for counting)."""
    return _SYSTEM + '\n\n' + self.user(texts, partial)

  def prompt(self, texts, partial):
    if self._chat:
      return [{'role': 'system', 'content': _SYSTEM},
              {'role': 'user', 'content': self.user(texts, partial)}]
    return self.as_text(texts, partial)


class _Failed(Exception):
  def __init__(self, msg, error_type):
    super().__init__(msg)
    self.error_type = error_type


class _SummarizeFn(beam.CombineFn):
  """Accumulates a group's texts; summarizes them in token-budgeted rounds."""
  def __init__(self, handler, prompts: _Prompts, budget: _Budget, batch_size: int):
    self._handler = handler
    self._prompts = prompts
    self._budget = budget
    self._batch_size = batch_size
    self._model = None
    self._prompt_tokens = Metrics.distribution(f'beam_llm.{_OWNER}', 'prompt_tokens')
    self._rounds = Metrics.distribution(f'beam_llm.{_OWNER}', 'rounds')
    self._calls = Metrics.counter(f'beam_llm.{_OWNER}', 'model_calls')

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
    except _Failed as exn:
      return ('failed', (str(exn), exn.error_type), count)

  def _reduce(self, texts: list) -> str:
    if self._model is None:  # Not in setup: precombining needs no model.
      self._budget.load()
      self._model = self._handler.load_model()
    overhead = self._budget.count(self._prompts.as_text([], partial=True))
    room = self._budget.max_tokens - overhead
    # At most half the room (with slack, as token counts do not simply add
    # up), so every chunk holds at least two texts: each round at least
    # halves their number.
    cap = (room - 2 * self._budget.count(_SEPARATOR)) // 2 - 4
    if cap < 8:
      raise _Failed(f'max_input_tokens leaves only {room} tokens for texts',
                    'prompt_too_long')
    # Long inputs are split (nothing lost); a summary longer than the cap
    # (max_new_tokens is at most half the budget, but a re-tokenized answer
    # can count more) is cut to it.
    items = [p for t in texts for p in (
        self._budget.split(t, cap) if self._budget.count(t) > cap else [t])]
    for round_ in range(1, _MAX_ROUNDS + 1):
      chunks = self._pack(items)
      if len(chunks) == 1:
        self._rounds.update(round_)
        return self._generate([self._prompts.prompt(chunks[0], partial=False)])[0]
      items = [
          t if self._budget.count(t) <= cap else self._budget.split(t, cap)[0]
          for t in self._generate(
              [self._prompts.prompt(chunk, partial=True) for chunk in chunks])
      ]
    raise _Failed(f'no single summary after {_MAX_ROUNDS} rounds (raise '
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

  def _generate(self, prompts: list) -> list:
    out = []
    for i in range(0, len(prompts), self._batch_size):
      batch = prompts[i:i + self._batch_size]
      for p in batch:
        text = p if isinstance(p, str) else '\n\n'.join(m['content'] for m in p)
        self._prompt_tokens.update(self._budget.count(text))
      self._calls.inc(len(batch))
      for result in self._handler.run_inference(batch, self._model):
        response = result.inference
        if isinstance(response, GenerationFailure):
          raise _Failed(response.msg, response.error_type)
        out.append(getattr(response, 'text', response))
    return out


class _ToRowsDoFn(beam.DoFn):
  def __init__(self, keys, output, count_output):
    self._keys = keys
    self._output = output
    self._count_output = count_output

  def process(self, keyed):
    key, (status, value, count) = keyed
    fields = dict(zip(self._keys, key))
    if status == 'ok':
      yield beam.Row(**fields, **{self._output: value, self._count_output: count})
      return
    msg, error_type = value
    yield from _rows.tag_error(
        _rows.error_row(
            beam.Row(**fields, **{self._count_output: count}),
            f'{_OWNER} ({error_type}): {msg}', error_type))
