"""SearchVectorStore: an Enrichment-style top-k lookup in a vector store."""
import json
from typing import Any, List, Mapping, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import row_type

from beam_llm import _config
from beam_llm import _rows
from beam_llm import stores
from beam_llm.stores import calls
from beam_llm.stores.base import BadRecord
from beam_llm.stores.base import check_filter

_OWNER = 'SearchVectorStore'

# One retrieved chunk, as RenderPrompt templates see it:
# {% for doc in context %}{{ doc.doc_id }}: {{ doc.text }}{% endfor %}
HitRow = row_type.RowTypeConstraint.from_fields([
    ('chunk_id', str), ('doc_id', str), ('text', str), ('score', float),
    ('metadata', str)])


class SearchVectorStore(beam.PTransform):
  """Adds the stored chunks nearest to each row's vector (an Enrichment).

  For each row, searches the store for the `top_k` entries most similar
  (cosine) to its vector and adds them, best first, as a list field
  (`context`) of `{chunk_id, doc_id, text, score, metadata}` rows, where
  `score` is the cosine similarity and `metadata` the stored metadata as JSON
  text. A RenderPrompt template loops over them:
  `{% for doc in context %}[{{ doc.doc_id }}] {{ doc.text }}{% endfor %}`.
  It also adds `sources`: the ids of the documents the hits came from, best
  first, without repeats.

  The store is named as in WriteToVectorStore and checked when the pipeline
  is built: one that cannot be reached, or that has no such collection yet,
  fails then, naming the transform and the store. A row without a usable
  vector, or with one the store refuses (e.g. of another size than the
  collection's), goes to the error output (`bad_vector`). A store that is
  down or restarting is retried with a reconnect (docs/remote.md); an
  outage that outlasts the retries fails the bundle, not the rows.

  Args:
    store: A Milvus Lite path, a Milvus URI or a PostgreSQL URI.
    collection: Collection or table name. Defaults to `documents`.
    vector: Input field with the query vector. Defaults to `embedding`.
    top_k: How many hits per row (the vector-search sense; GenerateText's
      `top_k` is the sampling one). Defaults to 3.
    filter: Only entries whose fields equal these values, e.g.
      `{category: hours}` (metadata fields written with
      WriteToVectorStore's `metadata`) or `{doc_id: f07}`.
    min_score: Leave out hits less similar than this (cosine, -1 to 1).
    output: Name of the field that receives the hits. Defaults to `context`.
    sources_output: Name of the field that receives the source document
      ids, or null for none. Defaults to `sources`.
    batch_size: Rows searched together in one request. Defaults to 16.
    error_handling: `{output: <name>}` sends rows that cannot be searched to
      that output as Beam YAML error rows instead of failing the pipeline.
    sources: The old name of `sources_output` (deprecated; it stops working
      in the next release).
  """
  @_config.checks_options(_OWNER)
  def __init__(
      self,
      store: str,
      collection: str = 'documents',
      vector: str = 'embedding',
      top_k: int = 3,
      filter: Optional[Mapping[str, Any]] = None,  # pylint: disable=redefined-builtin
      min_score: Optional[float] = None,
      output: str = 'context',
      sources_output: Optional[str] = 'sources',
      batch_size: int = 16,
      error_handling: Optional[Mapping[str, Any]] = None,
      sources: Optional[str] = None):
    super().__init__()
    sources_output = _config.renamed(
        _OWNER, 'sources', 'sources_output', sources, sources_output)
    for key in ('top_k', 'batch_size'):
      if getattr(self.options, key) < 1:
        _config.fail(_OWNER, key,
                     f'must be at least 1, got {getattr(self.options, key)}')
    problem = check_filter(filter)
    if problem:
      _config.fail(_OWNER, 'filter', problem)
    self._store = stores.create_store(_OWNER, store, collection, must_exist=True)
    self._sources = sources_output  # Also under its old name.
    self._error_output = _config.error_output_name(_OWNER, error_handling)

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    _rows.require_field(_OWNER, 'vector', self.options.vector, fields)
    added = [(self.options.output, List[HitRow])]
    if self._sources:
      added.append((self._sources, List[str]))
    batches = pcoll | 'Batch' >> beam.BatchElements(
        min_batch_size=1, max_batch_size=self.options.batch_size)
    return _rows.split_outputs(
        batches,
        'Search',
        _SearchDoFn(self._store, self.options, self._sources),
        _rows.row_type_with(fields, added),
        self._error_output,
        element_type=pcoll.element_type)


def _vector_problem(vector) -> Optional[str]:
  if vector is None or not hasattr(vector, '__len__') or len(vector) == 0:
    return 'the row holds no vector'
  try:
    [float(x) for x in vector]
  except (TypeError, ValueError):
    return 'the vector is not a list of numbers'
  return None


class _SearchDoFn(beam.DoFn):
  def __init__(self, store, options, sources_output: Optional[str]):
    self._store = store
    self._vector = options.vector
    self._top_k = options.top_k
    self._filter = dict(options.filter or {})
    self._min_score = options.min_score
    self._output = options.output
    self._sources = sources_output
    self._searched = Metrics.counter('beam_llm.SearchVectorStore', 'searched')
    self._failed = Metrics.counter('beam_llm.SearchVectorStore', 'failed')

  def setup(self):
    self._calls = calls.StoreCaller(self._store)
    self._calls.call('connect', self._store.connect)

  def teardown(self):
    self._store.close()

  def process(self, batch):
    todo = []
    for row in batch:
      problem = _vector_problem(getattr(row, self._vector, None))
      if problem:
        yield from self._error(row, problem, 'bad_vector')
      else:
        todo.append(row)
    yield from self._search(todo)

  def _search(self, rows: list):
    if not rows:
      return
    vectors = [list(getattr(r, self._vector)) for r in rows]
    try:  # Retried through outages; one that outlasts them fails the bundle.
      results = self._calls.call('search', lambda: self._store.search(
          vectors, self._top_k, self._filter))
    except BadRecord as exn:
      if len(rows) == 1:
        yield from self._error(rows[0], str(exn), 'bad_vector')
        return
      for row in rows:  # Find the row that fails; the others get answers.
        yield from self._search([row])
      return
    for row, hits in zip(rows, results):
      if self._min_score is not None:
        hits = [h for h in hits if h.score >= self._min_score]
      added = {self._output: [
          beam.Row(chunk_id=h.chunk_id, doc_id=h.doc_id, text=h.text,
                   score=h.score,
                   metadata=json.dumps(dict(h.metadata), sort_keys=True))
          for h in hits]}
      if self._sources:
        added[self._sources] = list(dict.fromkeys(h.doc_id for h in hits))
      self._searched.inc()
      yield _rows.with_fields(row, **added)

  def _error(self, row, msg: str, error_type: str):
    self._failed.inc()
    yield from _rows.tag_error(_rows.error_row(
        row, f'{_OWNER} ({self._store.describe()}): {msg}', error_type))
