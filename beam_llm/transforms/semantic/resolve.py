"""Resolve: entity resolution. Rows that describe the same entity get one
entity id: blocking picks candidate pairs, the model judges each, and the
pairs it matches are joined into clusters (union-find)."""
import collections
from typing import Any, List, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.typehints import row_type

from beam_llm import _config
from beam_llm import _rows
from beam_llm import lineage as lineage_policy
from beam_llm.transforms.semantic import _blocking
from beam_llm.transforms.semantic import _options
from beam_llm.transforms.semantic.semantic_filter import SemanticFilter

_OWNER = 'Resolve'
_PREFIX = {'left': 'first_', 'right': 'second_'}
_DEFAULT_CONDITION = 'The two records describe the same real-world entity.'


@_options.inherits_generate_options
class Resolve(beam.PTransform):
  """Gives rows that describe the same entity one `entity_id` (dedup).

  The model judges candidate pairs of rows (`Do these two records describe
  the same entity?`), and the pairs it matches are joined into clusters,
  so A = B and B = C put A, B and C together even if A and C were never
  compared. A cluster's id is the smallest `record_id` in it. Comparing
  every pair is n(n - 1) / 2 questions, so candidates are cut first
  (blocking), as for SemanticJoin:

  - `block_by: <field>`: only rows whose field values are equal;
  - `embedding_model_handler` (EmbedText's backends): each row with its
    `block_top_k` nearest rows by the cosine similarity of `text`
    embeddings (all rows are held in memory on each worker);
  - neither: every pair, which needs `max_model_calls`; the run fails
    before asking the model if there are more candidate pairs than that.

  Output: every input row with its entity id in `output`; or, with
  `merge_fields`, one row per entity: the id, the `record_id`s in it
  (`records`) and each merge field's most common value among them (the
  earliest record's on a tie; nulls do not count).

  Metrics (namespace `beam_llm.Resolve`): `candidate_pairs` (each one
  question to the model), `output_rows` / `dropped_rows` the pairs judged
  the same / different. The clusters are formed in one place from the
  matched pairs (a list of id pairs), so the input is treated as one batch
  (one global window).

  `examples` are pairs the model judges, `{input: <the two records as
  text>, output: true}` (the prompt shows each as `First row:` and `Second
  row:` with `- field: value` lines). `reason_output` is not supported.

  Args:
    record_id: The input field holding each row's own id (unique, not
      null); entity ids are record ids.
    condition: When two rows are the same entity, in plain language.
      Defaults to `The two records describe the same real-world entity.`
    fields: Fields shown to the model. Defaults to all but `record_id`.
    block_by: Compare only rows whose values of this field are equal.
    embedding_model_handler: An EmbedText backend (`{type, config}`) to
      compare each row with its nearest rows.
    text: The field embedded for `embedding_model_handler`.
    block_top_k: Nearest rows compared with each row by embeddings.
      Defaults to 5.
    max_model_calls: Most candidate pairs the model may be asked about; the
      run fails before any model call when there are more. Required when
      there is no blocking.
    output: Name of the field that receives the entity id. Defaults to
      `entity_id`.
    merge_fields: If set, one row per entity with these fields merged.
    error_handling: `{output: <name>}` sends pairs the model could not
      judge to that output as error rows (`element` is the pair, fields
      prefixed `first_` and `second_`); such a pair counts as not the same
      entity. With embedding blocking, a row whose text cannot be embedded
      (an empty text) is an error row too (`element` is the row) and an
      entity of its own. Without it, either fails the run.
  """
  def __init__(
      self,
      record_id: str,
      condition: str = _DEFAULT_CONDITION,
      fields: Optional[Sequence[str]] = None,
      block_by: Optional[str] = None,
      embedding_model_handler: Optional[Mapping[str, Any]] = None,
      text: Optional[str] = None,
      block_top_k: int = 5,
      max_model_calls: Optional[int] = None,
      output: str = 'entity_id',
      merge_fields: Optional[Sequence[str]] = None,
      error_handling: Optional[Mapping[str, Any]] = None,
      **generate_options):
    super().__init__()
    if not condition.strip():
      _config.fail(_OWNER, 'condition', 'is empty')
    _blocking.check_options(_OWNER, block_by, embedding_model_handler,
                            {'text': text}, block_top_k, max_model_calls,
                            'n(n-1)/2')
    if not output.isidentifier():
      _config.fail(_OWNER, 'output', f'{output!r} is not a plain field name')
    if _options.shared(_OWNER, generate_options).reason_output:
      # The output is rows, not the pair decisions a reason would explain.
      _config.fail(_OWNER, 'reason_output', 'is not supported: Resolve '
                   'outputs rows, not the pair decisions a reason explains')
    if merge_fields is not None and not merge_fields:
      _config.fail(_OWNER, 'merge_fields', 'names no field')
    self._id = record_id
    self._condition = condition.strip()
    self._shown = fields
    self._block_by = block_by
    self._embed = (None if embedding_model_handler is None else
                   _blocking.embedder(_OWNER, embedding_model_handler, text,
                                      {'output': _rows.INNER_ERRORS}))
    self._top_k = block_top_k
    self._max_calls = max_model_calls
    self._output = output
    self._merge = None if merge_fields is None else list(merge_fields)
    self._judge_options = dict(generate_options)
    self._error_output = _config.error_output_name(_OWNER, error_handling)
    self._error_handling = error_handling
    # Checked now, with a stand-in text: a misspelt option fails at build.
    _PairJudge(condition=self._condition, template='{{ x }}',
               **self._judge_options)

  def expand(self, rows):
    fields = _rows.input_fields(rows)
    if fields is None:
      _config.fail(_OWNER, 'input', 'has no schema (rows with named fields '
                   'are needed)')
    if not isinstance(rows.windowing.windowfn, window.GlobalWindows):
      _config.fail(_OWNER, 'input', 'is windowed: Resolve forms clusters over '
                   'the whole input (one global window); window after it')
    names = [n for n, _ in fields]
    for key, value in (('record_id', self._id), ('block_by', self._block_by)):
      if value is not None:
        _rows.require_field(_OWNER, key, value, fields)
    for key, values in (('fields', self._shown), ('merge_fields', self._merge)):
      for name in values or []:
        _rows.require_field(_OWNER, key, name, fields)
    id_type = dict(fields)[self._id]
    rows = rows | 'CheckIds' >> beam.Map(_with_id, self._id).with_output_types(
        rows.element_type)
    pair_type = row_type.RowTypeConstraint.from_fields(
        [(_PREFIX[s] + n, t) for s in _blocking.SIDES for n, t in fields])
    # Rows that cannot be embedded match nothing (their own entity) and are
    # error rows too, as a pair the model cannot judge is.
    not_embedded = []
    pairs = self._candidates(rows, pair_type, not_embedded)
    if self._max_calls:
      pairs = _blocking.capped(pairs, _OWNER, self._max_calls, pair_type)
    pairs = _blocking.counted(pairs, _OWNER, pair_type)
    shown = self._shown or [n for n in names if n != self._id]
    judge = _PairJudge(
        condition=self._condition,
        template=_blocking.pair_template({'left': shown, 'right': shown}, _PREFIX),
        keep_fields=[_PREFIX[s] + self._id for s in _blocking.SIDES],
        error_handling=self._error_handling, **self._judge_options)
    judged = pairs | 'Judge' >> judge
    lineage = judge.lineage(rows.pipeline)
    carried = [(lineage_policy.FIELD, lineage_policy.LINEAGE)] if lineage else []
    matched = judged['good'] if self._error_handling else judged
    first, second = (_PREFIX[s] + self._id for s in _blocking.SIDES)
    roots = (matched
             | 'Edges' >> beam.Map(
                 lambda p: (getattr(p, first), getattr(p, second)))
             | 'Clusters' >> beam.CombineGlobally(_Clusters()))
    output = self._output
    resolved = rows | 'Assign' >> beam.Map(
        _assigned, beam.pvalue.AsSingleton(roots), self._id, output,
        lineage).with_output_types(
            _rows.row_type_with(fields, [(output, id_type)] + carried))
    if self._merge is not None:
      types = dict(fields)
      resolved = (
          resolved
          | 'ByEntity' >> beam.Map(lambda row: (getattr(row, output), row))
          | 'Entities' >> beam.GroupByKey()
          | 'Merge' >> beam.Map(_merged, self._id, output, self._merge, lineage)
          .with_output_types(row_type.RowTypeConstraint.from_fields(
              [(output, id_type), ('records', List[id_type])] +
              [(n, Optional[types[n]]) for n in self._merge] + carried)))
    unembedded = _rows.errors_out(not_embedded, 'NotEmbedded',
                                  self._error_output) if not_embedded else None
    if not self._error_handling:
      return resolved
    errors = judged[self._error_output]
    if unembedded is not None:
      errors = (errors, unembedded) | 'Errors' >> beam.Flatten()
    return {'good': resolved, self._error_output: errors}

  def _candidates(self, rows, pair_type, not_embedded: list):
    if self._block_by:
      return _blocking.pairs_within_key(rows, self._block_by, self._id,
                                        _PREFIX, pair_type)
    if self._embed:
      vectors = _blocking.embedded(rows, self._embed, 'Embed', not_embedded)
      f = self._id
      return _blocking.distinct_unordered(
          _blocking.nearest_pairs(
              vectors, vectors, self._top_k, _PREFIX, pair_type,
              same=lambda a, b: getattr(a, f) == getattr(b, f)),
          _PREFIX, self._id, pair_type)
    return _blocking.ordered(
        _blocking.all_pairs(rows, rows, _PREFIX, pair_type), _PREFIX,
        self._id, pair_type)


class _PairJudge(SemanticFilter):
  """SemanticFilter over candidate pairs, under Resolve's name."""
  owner = _OWNER


def _with_id(row, field):
  if getattr(row, field) is None:
    # Entity ids are record ids: a row without one cannot be placed, and
    # the pairs made so far would silently lose it.
    raise ValueError(f'{_OWNER}: a row has no {field!r} (record_id must be '
                     f'set on every row): {row!r}')
  return row


class _Clusters(beam.CombineFn):
  """Matched (a, b) id pairs -> {id: smallest id of its cluster}."""
  def create_accumulator(self):
    return []

  def add_input(self, edges, edge):
    edges.append(edge)
    return edges

  def merge_accumulators(self, accumulators):
    return [e for edges in accumulators for e in edges]

  def extract_output(self, edges):
    parent = {}

    def find(x):
      parent.setdefault(x, x)
      while parent[x] != x:
        parent[x] = parent[parent[x]]  # Path halving keeps trees flat.
        x = parent[x]
      return x

    for a, b in edges:
      ra, rb = find(a), find(b)
      if ra != rb:
        low, high = sorted((ra, rb), key=_blocking.order_key)
        parent[high] = low  # The root is always the smallest id.
    return {x: find(x) for x in list(parent)}


def _assigned(row, roots, id_field, output, lineage):
  record = getattr(row, id_field)
  added = {output: roots.get(record, record)}
  if lineage:
    added[lineage_policy.FIELD] = lineage_policy.merged(row, lineage)
  return _rows.with_fields(row, **added)


def _merged(keyed, id_field, output, merge_fields, lineage):
  entity, rows = keyed
  rows = sorted(rows, key=lambda r: _blocking.order_key(getattr(r, id_field)))
  merged = {}
  for name in merge_fields:
    values = [getattr(r, name) for r in rows if getattr(r, name) is not None]
    counts = collections.Counter(map(repr, values))
    merged[name] = max(values, key=lambda v: counts[repr(v)]) if values else None
  if lineage:
    merged[lineage_policy.FIELD] = lineage_policy.merged({}, lineage)
  return beam.Row(**{output: entity,
                     'records': [getattr(r, id_field) for r in rows]},
                  **merged)
