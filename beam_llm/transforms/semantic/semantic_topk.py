"""SemanticTopK: the k rows that best meet a criterion, per key (and window),
ranked by the model in pairwise comparisons (a tournament, not every pair)."""
import functools
import json
import typing
from typing import Any, Mapping, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_llm import _config
from beam_llm import _rows
from beam_llm import lineage as lineage_policy
from beam_llm.transforms.semantic import _answers
from beam_llm.transforms.semantic import _asking
from beam_llm.transforms.semantic import _base
from beam_llm.transforms.semantic import _blocking
from beam_llm.transforms.semantic import _options
from beam_llm.transforms.semantic import _tournament

_OWNER = 'SemanticTopK'
_TEXT = 'beam_llm_text'
_SYSTEM = 'You compare texts carefully. You answer with JSON only.'


@_options.inherits_generate_options
class SemanticTopK(beam.PTransform):
  """Keeps the `k` rows that best meet a criterion, ranked by the model.

  The model compares two rows at a time (`Which of these two complaints is
  more urgent?`) in a tournament: a knockout finds the best row in n - 1
  comparisons, and each next place is decided among the few rows that lost
  only to rows already placed, about n - 1 + (k - 1) * log2(n) comparisons
  in all instead of n(n - 1) / 2 for every pair. Each round's comparisons
  go to the model as one batch. The metric `model_calls` (namespace
  `beam_llm.SemanticTopK`) counts the comparisons, `dropped_rows` the rows
  that did not make it.

  Without `group_by` the whole input is ranked (per window, on windowed
  input); with it, each key's rows. A group's rows are held in memory on
  one worker while it is ranked. With `embedding_model_handler`, each
  group is first cut to the `shortlist` rows whose embeddings lie nearest
  the criterion's, and only those are compared.

  Output: the k best rows of each group (fewer if it has fewer), with
  their place (1 = best) in `output`. Rows that did not make it are
  dropped. If a comparison fails (an answer that is neither `first` nor
  `second`, a refused prompt), every row of that group goes to the error
  output with the reason; a row whose text does not render goes there
  alone. Rows are ordered by their text before the tournament, so a run
  is repeatable. With `reason_output`, a kept row carries the reason the
  model gave in the last comparison it won; `examples` are comparisons,
  `{input: {first: <text>, second: <text>}, output: first}`.

  Args:
    criterion: What makes a row better, in plain language, e.g. `The more
      urgent customer complaint.`
    k: How many rows to keep per group.
    group_by: The field, or list of fields, whose values form the groups
      ranked separately. Defaults to none: one ranking of the whole input.
    embedding_model_handler: An EmbedText backend (`{type, config}`) to cut
      each group to its `shortlist` rows nearest the criterion before the
      model compares them.
    shortlist: Rows per group kept by the embedding cut. Defaults to 10 x k.
    output: Name of the field that receives the row's place. Defaults to
      `rank`.
    error_handling: `{output: <name>}` sends rows that fail to that output
      as error rows (`element` is the input row).
  """
  opt_in = ('field', 'template', 'template_file')  # _options.OPT_IN

  def __init__(
      self,
      criterion: str,
      k: int,
      group_by: Optional[Union[str, Sequence[str]]] = None,
      embedding_model_handler: Optional[Mapping[str, Any]] = None,
      shortlist: Optional[int] = None,
      output: str = 'rank',
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    if not criterion.strip():
      _config.fail(_OWNER, 'criterion', 'is empty')
    if k < 1:
      _config.fail(_OWNER, 'k', f'must be at least 1, got {k}')
    if shortlist is not None and embedding_model_handler is None:
      _config.fail(_OWNER, 'shortlist', 'needs embedding_model_handler')
    shortlist = shortlist or 10 * k
    if shortlist < k:
      _config.fail(_OWNER, 'shortlist', f'({shortlist}) must be at least k ({k})')
    if not output.isidentifier():
      _config.fail(_OWNER, 'output', f'{output!r} is not a plain field name')
    reason_output, examples = _options.shared(_OWNER, generate_options)
    self._keys = _base.group_fields(_OWNER, group_by)
    self._render = _base.render_prompt(
        _OWNER, template=_base.content_source(_OWNER, generate_options),
        output=_TEXT, error_handling={'output': _rows.INNER_ERRORS})
    self._embed = (None if embedding_model_handler is None else
                   _blocking.embedder(_OWNER, embedding_model_handler, _TEXT,
                                      {'output': _rows.INNER_ERRORS}))
    self._embed_criterion = (None if embedding_model_handler is None else
                             _blocking.embedder(_OWNER, embedding_model_handler, 'text'))
    schema = _answers.answer_schema(
        {'better': {'type': 'string', 'enum': ['first', 'second']}},
        reason_output, _OWNER)
    self._generate = _options.generate_text(
        _OWNER, generate_options, 'prompt', 'response', schema)
    # Built in expand, once the run's lineage is known.
    self._rank = functools.partial(
        _RankDoFn,
        _asking.Asker(_OWNER, _options.handler_of(self._generate), schema,
                      generate_options.get('max_batch_size') or 8),
        _Comparisons(criterion.strip(), schema, generate_options['chat'],
                     _answers.examples_text(_OWNER, examples, schema, _shown_pair)),
        k, shortlist if embedding_model_handler else None, output, reason_output)
    self._criterion = criterion.strip()
    self._out = [(output, int)] + ([(reason_output, Optional[str])]
                                   if reason_output else [])
    self._error_output = _config.error_output_name(_OWNER, error_handling)

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    for key in self._keys:
      _rows.require_field(_OWNER, 'group_by', key, fields)
    _options.handler_of(self._generate).check_at_build()
    rendered = pcoll | 'Text' >> self._render
    rows, failures = rendered['good'], [rendered[_rows.INNER_ERRORS]]
    criterion_vector = None
    if self._embed is not None:
      embedded = rows | 'Embed' >> self._embed
      rows = embedded['good']
      failures.append(embedded[_rows.INNER_ERRORS])
      criterion_vector = beam.pvalue.AsSingleton(
          pcoll.pipeline | 'Criterion' >> beam.Create(
              [beam.Row(text=self._criterion)])
          | 'EmbedCriterion' >> self._embed_criterion)
    keys = self._keys
    types = dict(fields) if fields is not None else {}
    key_type = typing.Tuple[tuple(types.get(k, Any) for k in keys)]
    groups = (
        rows
        | 'Key' >> beam.Map(lambda row: (tuple(getattr(row, k) for k in keys),
                                         row)).with_output_types(
                                             typing.Tuple[key_type, Any])
        | 'Group' >> beam.GroupByKey()
        | 'AsGroups' >> beam.Map(lambda kv: ('group', kv[1])))
    outcomes = [groups] + [
        f | f'Failures{i}' >> beam.Map(lambda e: ('error', e))
        for i, f in enumerate(failures)]
    outcomes = outcomes | 'Outcomes' >> beam.Flatten()
    lineage = _options.lineage_of(self._generate, pcoll.pipeline)
    out = self._out + ([(lineage_policy.FIELD, lineage_policy.LINEAGE)]
                       if lineage else [])
    return _rows.split_outputs(
        outcomes, 'Rank', self._rank(lineage=lineage),
        _rows.row_type_with(fields, out),
        self._error_output, element_type=pcoll.element_type,
        side_inputs=[criterion_vector] if criterion_vector else [])


def _shown_pair(value) -> str:
  """An example's input, `{first: ..., second: ...}`, as comparisons show it."""
  if not isinstance(value, Mapping) or set(value) != {'first', 'second'}:
    raise _config.ConfigError(
        _OWNER, 'option \'examples\' inputs must be {first: <text>, '
        f'second: <text>}}, got {value!r}')
  return _pair_text(value['first'], value['second'])


def _pair_text(first: str, second: str) -> str:
  return f'<first>\n{first}\n</first>\n\n<second>\n{second}\n</second>'


class _Comparisons:
  """The question for one pair of texts."""
  def __init__(self, criterion: str, schema: dict, chat: bool, examples: str):
    self._criterion = criterion
    self._answer = _answers.answer_instruction(
        '{"better": "first" or "second"}', schema)
    self._chat = chat
    self._examples = examples

  def prompt(self, first: str, second: str):
    user = (f'{self._examples}Criterion: {self._criterion}\n\nWhich of the '
            'two texts below meets the criterion better?\n\n'
            f'{_pair_text(first, second)}\n\n{self._answer}')
    return _asking.messages(_SYSTEM, user, self._chat)


class _RankDoFn(beam.DoFn):
  def __init__(self, asker, comparisons, k, shortlist, output, reason_output,
               lineage=None):
    self._lineage = lineage
    self._dropped = Metrics.counter(f'beam_llm.{_OWNER}', 'dropped_rows')
    self._asker = asker
    self._comparisons = comparisons
    self._k = k
    self._shortlist = shortlist
    self._output = output
    self._reason_output = reason_output

  def process(self, outcome, criterion_vector=None):
    kind, value = outcome
    if kind == 'error':
      yield from _rows.tag_error(_rows.error_row(
          _plain(value.element),
          f'{_OWNER} ({value.error_type}): {_base.reason_of(value.msg)}',
          value.error_type, value.stack))
      return
    rows = sorted(value, key=_order)
    group_size = len(rows)
    texts = [getattr(r, _TEXT) for r in rows]
    if criterion_vector is not None and len(rows) > self._shortlist:
      rows, texts = self._nearest(rows, texts, criterion_vector)
    reasons = {}

    def compare(pairs):
      answers = self._asker.answers(
          [self._comparisons.prompt(texts[a], texts[b]) for a, b in pairs])
      for pair, answer in zip(pairs, answers):
        reasons[pair] = answer.get('reason')
      return [a['better'] == 'first' for a in answers]

    try:
      chosen, last_win = _tournament.top_k(len(rows), self._k, compare)
    except _asking.Failed as exn:
      for row in rows:
        yield from _rows.tag_error(_rows.error_row(
            _plain(row), f'{_OWNER} ({exn.error_type}): a comparison in this '
            f'row\'s group failed: {exn}', exn.error_type))
      return
    self._dropped.inc(group_size - len(chosen))
    for place, i in enumerate(chosen, 1):
      added = {self._output: place}
      if self._reason_output:
        added[self._reason_output] = reasons.get(last_win[i])
      if self._lineage:
        added[lineage_policy.FIELD] = lineage_policy.merged(rows[i], self._lineage)
      yield _rows.with_fields(_plain(rows[i]), **added)

  def _nearest(self, rows, texts, criterion_vector):
    import numpy as np
    matrix = np.asarray([getattr(r, _blocking.VECTOR) for r in rows], dtype=float)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-12
    query = np.asarray(getattr(criterion_vector, _blocking.VECTOR), dtype=float)
    order = np.argsort(-(matrix @ query), kind='stable')[:self._shortlist]
    keep = sorted(int(i) for i in order)
    return [rows[i] for i in keep], [texts[i] for i in keep]


def _order(row):
  values = _rows.as_dict(row)
  return (values[_TEXT], json.dumps(
      {k: v for k, v in values.items() if k != _blocking.VECTOR},
      sort_keys=True, default=str))


def _plain(row):
  """The input row, without the fields this transform added."""
  values = _rows.as_dict(row)
  return beam.Row(**{k: v for k, v in values.items()
                     if k not in (_TEXT, _blocking.VECTOR)})
