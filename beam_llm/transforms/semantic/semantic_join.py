"""SemanticJoin: pairs of rows from two inputs for which a plain-language
condition holds, with blocking so that the model sees candidate pairs only."""
from typing import Any, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.typehints import row_type

from beam_llm import _config
from beam_llm import _rows
from beam_llm.transforms.semantic import _blocking
from beam_llm.transforms.semantic import _options
from beam_llm.transforms.semantic.semantic_filter import SemanticFilter

_OWNER = 'SemanticJoin'


@_options.inherits_generate_options
class SemanticJoin(beam.PTransform):
  """Joins two inputs on a condition in plain language.

  Give the inputs as `input: {left: A, right: B}`. Every candidate pair (a
  left row and a right row) is shown to the model with the condition
  (`The chat is about this product.`); pairs for which it holds come out as
  one row holding both rows' fields, prefixed (`left_`, `right_`). A naive
  join asks the model n x m times, so candidates are cut first (blocking):

  - `block_by: {left: field, right: field}`: only pairs whose two fields are
    equal (a join key the data has, e.g. a category);
  - `embedding_model_handler` (EmbedText's backends): each left row is
    paired with its `block_top_k` nearest right rows, by the cosine
    similarity of `left_text` and `right_text` embeddings (the right input
    is held in memory on each worker);
  - neither: every pair, which needs `max_model_calls`; the run fails
    before asking the model if there are more candidate pairs than that.

  The metric `candidate_pairs` (namespace `beam_llm.SemanticJoin`) counts
  the pairs, each one question to the model; `output_rows` the pairs that
  hold and `dropped_rows` those that do not.

  Args:
    condition: The condition, in plain language, that a joined pair meets.
    left_fields: Left fields shown to the model. Defaults to all of them.
    right_fields: Right fields shown to the model. Defaults to all of them.
    block_by: `{left: <field>, right: <field>}`: pair only rows whose two
      fields are equal.
    embedding_model_handler: An EmbedText backend (`{type, config}`) to
      pair each left row with its nearest right rows.
    left_text: Left field embedded for `embedding_model_handler`.
    right_text: Right field embedded for `embedding_model_handler`.
    block_top_k: Right rows paired with each left row by embeddings.
      Defaults to 5.
    max_model_calls: Most candidate pairs the model may be asked about; the
      run fails before any model call when there are more. Required when
      there is no blocking.
    left_prefix: Prefix of the left fields in the output. Defaults to
      `left_`.
    right_prefix: Prefix of the right fields in the output. Defaults to
      `right_`.
    error_handling: `{output: <name>}` sends pairs the model could not
      decide to that output as error rows (`element` is the pair), and,
      with embedding blocking, rows whose text cannot be embedded (an
      empty text: `element` is the row; it joins nothing). Without it,
      either fails the run.
  """
  opt_in = ('prompt_output',)  # _options.OPT_IN

  def __init__(
      self,
      condition: str,
      left_fields: Optional[Sequence[str]] = None,
      right_fields: Optional[Sequence[str]] = None,
      block_by: Optional[Mapping[str, str]] = None,
      embedding_model_handler: Optional[Mapping[str, Any]] = None,
      left_text: Optional[str] = None,
      right_text: Optional[str] = None,
      block_top_k: int = 5,
      max_model_calls: Optional[int] = None,
      left_prefix: str = 'left_',
      right_prefix: str = 'right_',
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    if not condition.strip():
      _config.fail(_OWNER, 'condition', 'is empty')
    if block_by is not None and set(block_by) != {'left', 'right'}:
      _config.fail(_OWNER, 'block_by',
                   f'must be {{left: <field>, right: <field>}}, got {block_by!r}')
    _blocking.check_options(
        _OWNER, block_by, embedding_model_handler,
        {'left_text': left_text, 'right_text': right_text}, block_top_k,
        max_model_calls, 'n x m')
    if left_prefix == right_prefix:
      _config.fail(_OWNER, 'left_prefix', 'must differ from right_prefix')
    self._condition = condition.strip()
    self._shown = {'left': left_fields, 'right': right_fields}
    self._block_by = block_by
    self._embed = None
    if embedding_model_handler is not None:
      self._embed = {side: _blocking.embedder(
          _OWNER, embedding_model_handler, field, {'output': _rows.INNER_ERRORS})
                     for side, field in (('left', left_text),
                                         ('right', right_text))}
    self._error_output = _config.error_output_name(_OWNER, error_handling)
    self._top_k = block_top_k
    self._max_calls = max_model_calls
    self._prefix = {'left': left_prefix, 'right': right_prefix}
    self._filter_options = dict(error_handling=error_handling,
                                **generate_options)
    # Checked now, with a stand-in text: a misspelt option fails at build.
    _PairJudge(condition=self._condition, template='{{ x }}',
               **self._filter_options)

  def expand(self, inputs):
    if not isinstance(inputs, dict) or set(inputs) != {'left', 'right'}:
      _config.fail(_OWNER, 'input',
                   'must name two inputs: `input: {left: A, right: B}`')
    fields = {}
    for side in ('left', 'right'):
      fields[side] = _rows.input_fields(inputs[side])
      if fields[side] is None:
        _config.fail(_OWNER, 'input', f'{side} has no schema (rows with '
                     'named fields are needed)')
      for name in self._shown[side] or []:
        _rows.require_field(_OWNER, f'{side}_fields', name, fields[side])
      if self._block_by:
        _rows.require_field(_OWNER, 'block_by', self._block_by[side], fields[side])
    pair_fields = [(self._prefix[s] + n, t) for s in ('left', 'right')
                   for n, t in fields[s]]
    pair_type = row_type.RowTypeConstraint.from_fields(pair_fields)
    not_embedded = []  # Rows that cannot be candidates: error rows.
    pairs = self._candidates(inputs, pair_type, not_embedded)
    if self._max_calls:
      pairs = _blocking.capped(pairs, _OWNER, self._max_calls, pair_type)
    pairs = _blocking.counted(pairs, _OWNER, pair_type)
    shown = {s: self._shown[s] or [n for n, _ in fields[s]]
             for s in ('left', 'right')}
    template = _blocking.pair_template(shown, self._prefix)
    judge = _PairJudge(condition=self._condition, template=template,
                       **self._filter_options)
    judged = pairs | 'Judge' >> judge
    if not not_embedded:
      return judged
    unembedded = _rows.errors_out(not_embedded, 'NotEmbedded', self._error_output)
    if unembedded is None:
      return judged
    return {'good': judged['good'], self._error_output: (
        judged[self._error_output], unembedded) | 'Errors' >> beam.Flatten()}

  def _candidates(self, inputs, pair_type, not_embedded: list):
    if self._block_by:
      return _blocking.pairs_by_key(inputs, self._block_by, self._prefix,
                                    pair_type)
    if self._embed:
      vectors = {side: _blocking.embedded(inputs[side], self._embed[side],
                                          f'Embed{side}', not_embedded)
                 for side in ('left', 'right')}
      return _blocking.nearest_pairs(vectors['left'], vectors['right'],
                                     self._top_k, self._prefix, pair_type)
    return _blocking.all_pairs(inputs['left'], inputs['right'], self._prefix,
                               pair_type)


class _PairJudge(SemanticFilter):
  """SemanticFilter over candidate pairs, under SemanticJoin's name."""
  owner = _OWNER
