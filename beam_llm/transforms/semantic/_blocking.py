"""Blocking: which pairs of rows a pairwise operator (SemanticJoin, Resolve)
asks the model about. Every pair is n x m questions (n(n-1)/2 within one
input); blocking keeps the pairs that share a key, or each row's nearest
rows by embedding, and a cap stops a run that would ask more than allowed
before the first question.

A pair is one row holding both rows' fields, prefixed (`left_`, `right_`).
"""
import json
from typing import Any, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_llm import _config
from beam_llm import _rows

VECTOR = 'beam_llm_vector'
SIDES = ('left', 'right')


def check_options(owner: str, block_by, embedding_model_handler, texts: Mapping,
                  block_top_k: int, max_model_calls: Optional[int],
                  naive_calls: str):
  """The blocking options' rules, the same for every pairwise operator."""
  if block_by is not None and embedding_model_handler is not None:
    _config.fail(owner, 'block_by',
                 'and embedding_model_handler are alternatives: give one')
  if embedding_model_handler is not None and not all(texts.values()):
    first, *others = texts
    _config.fail(owner, first,
                 (f'and {", ".join(others)} name the fields' if others else
                  'names the field') + ' to embed: give '
                 + ('them' if others else 'it') + ' with embedding_model_handler')
  if block_by is None and embedding_model_handler is None and not max_model_calls:
    _config.fail(
        owner, 'max_model_calls',
        f'is required without blocking (every pair is asked about: '
        f'{naive_calls} model calls): give block_by or '
        'embedding_model_handler, or a max_model_calls the run may not pass')
  if block_top_k < 1:
    _config.fail(owner, 'block_top_k', f'must be at least 1, got {block_top_k}')


def embedder(owner: str, model_handler, text: str, error_handling=None):
  """EmbedText adding each row's vector in VECTOR (dropped from pairs);
  its errors, at build and run time, name `owner`. A row it cannot embed
  goes to `error_handling`'s output (INNER_ERRORS: the operator routes it
  to its own error output), else fails the run."""
  from beam_llm.transforms.embed_text import EmbedText
  with _config.reported_as(owner):
    return EmbedText(model_handler=model_handler, text=text, output=VECTOR,
                     error_handling=error_handling)


def embedded(rows, embed, label: str, failures: list):
  """`rows | embed` (an embedder with INNER_ERRORS): the rows with their
  vectors; the rows it could not embed are appended to `failures`."""
  out = rows | label >> embed
  failures.append(out[_rows.INNER_ERRORS])
  return out['good']


def pair(left, right, prefix: Mapping[str, str]) -> beam.Row:
  values = {}
  for side, row in zip(SIDES, (left, right)):
    for name, value in _rows.as_dict(row).items():
      if name != VECTOR:
        values[prefix[side] + name] = value
  return beam.Row(**values)


def pairs_by_key(inputs: Mapping, key_fields: Mapping[str, str], prefix,
                 pair_type):
  """Pairs of a left and a right row whose key fields are equal (not None)."""
  keyed = {
      side: inputs[side] | f'Key{side}' >> beam.Map(
          lambda row, f=key_fields[side]: (getattr(row, f), row))
      for side in SIDES}
  return (keyed | 'Block' >> beam.CoGroupByKey()
          | 'Pairs' >> beam.FlatMap(
              lambda kv: (pair(l, r, prefix) for l in kv[1]['left']
                          for r in kv[1]['right'] if kv[0] is not None)
          ).with_output_types(pair_type))


def nearest_pairs(lefts, rights, top_k: int, prefix, pair_type, same=None):
  """Each left row paired with its `top_k` nearest right rows (cosine of
  VECTOR); `same(left, right)` true skips a row's pair with itself. The
  right rows are held in memory on each worker."""
  return lefts | 'Nearest' >> beam.FlatMap(
      _nearest, beam.pvalue.AsList(rights), top_k, prefix,
      same).with_output_types(pair_type)


def pairs_within_key(rows, key_field: str, id_field: str, prefix, pair_type):
  """Within one input: each unordered pair of rows whose key fields are
  equal (not None), left the row with the smaller id."""
  def pairs(kv):
    key, group = kv
    if key is None:
      return
    group = sorted(group, key=lambda r: order_key(getattr(r, id_field)))
    for i, left in enumerate(group):
      for right in group[i + 1:]:
        yield pair(left, right, prefix)

  return (rows | 'Key' >> beam.Map(lambda row: (getattr(row, key_field), row))
          | 'Block' >> beam.GroupByKey()
          | 'Pairs' >> beam.FlatMap(pairs).with_output_types(pair_type))


def all_pairs(lefts, rights, prefix, pair_type):
  return lefts | 'AllPairs' >> beam.FlatMap(
      lambda l, rs: (pair(l, r, prefix) for r in rs),
      beam.pvalue.AsList(rights)).with_output_types(pair_type)


def capped(pairs, owner: str, max_model_calls: int, pair_type):
  """Fails the run, before any model call, when there are more pairs than
  `max_model_calls`."""
  count = pairs | 'CountCandidates' >> beam.combiners.Count.Globally()
  return pairs | 'Cap' >> beam.Map(
      _within_cap, beam.pvalue.AsSingleton(count), max_model_calls,
      owner).with_output_types(pair_type)


def counted(pairs, owner: str, pair_type):
  """Counts the pairs in the `candidate_pairs` metric: each one question."""
  return pairs | 'CountPairs' >> beam.Map(
      _counted, f'beam_llm.{owner}').with_output_types(pair_type)


def distinct_unordered(pairs, prefix, id_field: str, pair_type):
  """Within one input, (a, b) and (b, a) are one question: each unordered
  pair once, left the row with the smaller id."""
  def oriented(p):
    values = _rows.as_dict(p)
    a, b = values[prefix['left'] + id_field], values[prefix['right'] + id_field]
    if order_key(b) < order_key(a):
      values = {prefix[s] + n[len(prefix[o]):]: v
                for s, o in (('left', 'right'), ('right', 'left'))
                for n, v in values.items() if n.startswith(prefix[o])}
      a, b = b, a
    return json.dumps([order_key(a), order_key(b)]), beam.Row(**values)

  return (pairs | 'Orient' >> beam.Map(oriented)
          | 'Distinct' >> beam.GroupByKey()
          | 'OnePerPair' >> beam.Map(lambda kv: next(iter(kv[1])))
          .with_output_types(pair_type))


def ordered(pairs, prefix, id_field: str, pair_type):
  """Within one input, every pair was made both ways: keep left < right."""
  left, right = prefix['left'] + id_field, prefix['right'] + id_field
  return pairs | 'Ordered' >> beam.Filter(
      lambda p: order_key(getattr(p, left)) < order_key(getattr(p, right))
  ).with_output_types(pair_type)


def pair_template(shown: Mapping[str, list], prefix) -> str:
  """The text of a pair the model reads: each row's shown fields."""
  return ''.join(
      f'{title}:\n' + ''.join(
          f'- {n}: {{{{ {prefix[s] + n} }}}}\n' for n in shown[s])
      for s, title in (('left', 'First row'), ('right', 'Second row')))


def order_key(value: Any):
  """Ids sort by type name first, so that mixed ids still compare."""
  return (type(value).__name__, value)


def _nearest(left, rights, k, prefix, same):
  import numpy as np
  if same is not None:
    rights = [r for r in rights if not same(left, r)]
  if not rights:
    return
  matrix = np.asarray([getattr(r, VECTOR) for r in rights], dtype=np.float32)
  matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-12
  query = np.asarray(getattr(left, VECTOR), dtype=np.float32)
  scores = matrix @ (query / (np.linalg.norm(query) + 1e-12))
  for i in np.argsort(-scores, kind='stable')[:k]:
    yield pair(left, rights[int(i)], prefix)


def _within_cap(p, count, cap, owner):
  if count > cap:
    raise RuntimeError(
        f'{owner}: {count} candidate pairs, more than max_model_calls '
        f'({cap}); add blocking (block_by, embedding_model_handler) or raise '
        'max_model_calls')
  return p


def _counted(p, namespace):
  Metrics.counter(namespace, 'candidate_pairs').inc()
  return p
