"""ChunkText: documents -> overlapping chunks with stable ids."""
from typing import Any, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_llm import _config
from beam_llm import _rows

_OWNER = 'ChunkText'


class ChunkText(beam.PTransform):
  """Splits each document's text into overlapping chunks, one row per chunk.

  Uses langchain-text-splitters' RecursiveCharacterTextSplitter: it cuts at
  paragraph breaks first, then lines, then words, so that each chunk holds at
  most `chunk_size` characters. Each output row is the input row with the
  text field holding the chunk, plus `chunk_id` (`<document id>#<n>`, so the
  same document chunked the same way gets the same ids and a re-run updates
  a store in place) and `chunk_index` (n, from 0).

  A document with no id, or with a missing, non-text or empty text, goes to
  the error output (`bad_document`).

  Args:
    text: Input field holding the document text. Defaults to `text`.
    doc_id: Input field holding the document id. Defaults to `id`.
    id: The old name of `doc_id` (deprecated; it stops working in the next
      release).
    chunk_size: Most characters per chunk. Defaults to 500 (well under the
      256-token limit of all-MiniLM-L6-v2 for English text).
    chunk_overlap: Characters shared by neighbouring chunks, so a fact cut
      at a boundary is whole in one of them. Defaults to 50.
    separators: Where to prefer cutting, in order. Defaults to paragraph
      break, line break, space, then anywhere.
    error_handling: `{output: <name>}` sends bad documents to that output as
      Beam YAML error rows (`element`, `msg`, `stack`, `error_type`) instead
      of failing the pipeline.
  """
  @_config.checks_options(_OWNER)
  def __init__(
      self,
      text: str = 'text',
      doc_id: str = 'id',
      chunk_size: int = 500,
      chunk_overlap: int = 50,
      separators: Optional[Sequence[str]] = None,
      error_handling: Optional[Mapping[str, Any]] = None,
      id: Optional[str] = None):  # pylint: disable=redefined-builtin
    super().__init__()
    doc_id = _config.renamed(_OWNER, 'id', 'doc_id', id, doc_id)
    if chunk_size < 1:
      _config.fail(_OWNER, 'chunk_size', f'must be at least 1, got {chunk_size}')
    if not 0 <= chunk_overlap < chunk_size:
      _config.fail(_OWNER, 'chunk_overlap',
                   f'must be at least 0 and less than chunk_size ({chunk_size}), '
                   f'got {chunk_overlap}')
    _config.require_extra(_OWNER, 'ChunkText', 'rag',
                          ('langchain_text_splitters',))
    self._text = text
    self._id = doc_id
    self._splitter = dict(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap,
        separators=list(separators) if separators else None)
    self._error_output = _config.error_output_name(_OWNER, error_handling)

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    _rows.require_field(_OWNER, 'text', self._text, fields)
    _rows.require_field(_OWNER, 'doc_id', self._id, fields)
    return _rows.split_outputs(
        pcoll,
        'Chunk',
        _ChunkDoFn(self._text, self._id, self._splitter),
        _rows.row_type_with(fields, [(self._text, str), ('chunk_id', str),
                                     ('chunk_index', int)]),
        self._error_output)


def document_problem(doc_id: Any, text: Any) -> Optional[str]:
  if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
    return 'the document has no id'
  if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
    return f'the document id must be text or an integer, got {type(doc_id).__name__}'
  if text is None:
    return 'the document has no text'
  if not isinstance(text, str):
    return f'the document text must be a string, got {type(text).__name__}'
  if not text.strip():
    return 'the document text is empty'
  return None


class _ChunkDoFn(beam.DoFn):
  def __init__(self, text: str, id_field: str, splitter: dict):
    self._text = text
    self._id = id_field
    self._splitter_options = splitter
    self._chunks = Metrics.counter('beam_llm.ChunkText', 'chunks')
    self._failed = Metrics.counter('beam_llm.ChunkText', 'failed')

  def setup(self):
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    options = {k: v for k, v in self._splitter_options.items() if v is not None}
    self._splitter = RecursiveCharacterTextSplitter(
        keep_separator=False, strip_whitespace=True, **options)

  def process(self, row):
    values = _rows.as_dict(row)
    doc_id, text = values.get(self._id), values.get(self._text)
    problem = document_problem(doc_id, text)
    if problem:
      self._failed.inc()
      yield from _rows.tag_error(
          _rows.error_row(row, f'{_OWNER}: {problem}', 'bad_document'))
      return
    for index, chunk in enumerate(self._splitter.split_text(text)):
      self._chunks.inc()
      yield beam.Row(**{**values, self._text: chunk,
                        'chunk_id': f'{doc_id}#{index}', 'chunk_index': index})
