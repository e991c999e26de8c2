"""EmbedText: a text field -> a vector field, on the worker or remotely."""
from typing import Any, List, Mapping, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler
from apache_beam.ml.inference.base import RunInference

from beam_llm import _config
from beam_llm import _rows
from beam_llm import embeddings
from beam_llm.embeddings.base import EmbeddingFailure

_OWNER = 'EmbedText'


class EmbedText(beam.PTransform):
  """Embeds a text field of each row into a vector field.

  Rows are batched (Beam's RunInference), and the model is loaded once per
  worker process (once per machine with `large_model`), as in GenerateText.
  A text that cannot be embedded goes to the error output on its own: empty
  or not text (`bad_text`), longer than the model takes (`text_too_long`),
  or failed (`embedding`; remote backends: the same error types as
  GenerateText's once retries are exhausted).

  Args:
    model_handler: The backend, as `{type: <backend>, config: {...}}`: on the
      worker `SentenceTransformers`; remote `OpenAICompatible` (any
      /v1/embeddings server) and `VertexAI` (text embedding models). Every
      option of every backend: docs/transforms.md.
    text: Input field holding the text. Defaults to `text`.
    output: Name of the field that receives the vector (a list of floats).
      Defaults to `embedding`.
    min_batch_size: Smallest batch RunInference forms.
    max_batch_size: Largest batch RunInference forms.
    max_batch_duration_secs: Longest a row waits for its batch to fill
      (streaming).
    large_model: Load one model per machine, shared by all worker processes,
      instead of one per process.
    model_copies: Exact number of model copies per machine (implies sharing).
    error_handling: `{output: <name>}` sends rows that fail to embed to that
      output as Beam YAML error rows (`element`, `msg`, `stack`,
      `error_type`), instead of failing the pipeline.
  """
  @_config.checks_options(_OWNER)
  def __init__(
      self,
      model_handler: Mapping[str, Any],
      text: str = 'text',
      output: str = 'embedding',
      min_batch_size: Optional[int] = None,
      max_batch_size: Optional[int] = None,
      max_batch_duration_secs: Optional[int] = None,
      large_model: bool = False,
      model_copies: Optional[int] = None,
      error_handling: Optional[Mapping[str, Any]] = None):
    super().__init__()
    options = self.options
    for key in ('min_batch_size', 'max_batch_size', 'model_copies'):
      value = getattr(options, key)
      if value is not None and value < 1:
        _config.fail(_OWNER, key, f'must be at least 1, got {value}')
    if min_batch_size and max_batch_size and min_batch_size > max_batch_size:
      _config.fail(_OWNER, 'min_batch_size',
                   f'({min_batch_size}) exceeds max_batch_size ({max_batch_size})')
    batching = {
        k: getattr(options, k)
        for k in ('min_batch_size', 'max_batch_size', 'max_batch_duration_secs',
                  'large_model', 'model_copies') if getattr(options, k) is not None
    }
    self._handler = embeddings.create_handler(_OWNER, model_handler, batching)
    self._text = text
    self._output = output
    self._error_output = _config.error_output_name(_OWNER, error_handling)

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    _rows.require_field(_OWNER, 'text', self._text, fields)
    self._handler.check_at_build()
    text = self._text
    results = (
        pcoll
        | 'KeyByRow' >> beam.Map(lambda row: (row, getattr(row, text, None)))
        | 'RunInference' >> RunInference(KeyedModelHandler(self._handler)))
    return _rows.split_outputs(
        results,
        'Collect',
        _CollectDoFn(self._output, self._handler.owner),
        _rows.row_type_with(fields, [(self._output, List[float])]),
        self._error_output,
        element_type=pcoll.element_type)


class _CollectDoFn(beam.DoFn):
  def __init__(self, output: str, owner: str):
    self._output = output
    self._owner = owner  # EmbedText, or the operator that built it.

  def process(self, keyed):
    row, result = keyed
    vector = result.inference
    if isinstance(vector, EmbeddingFailure):
      yield from _rows.tag_error(
          _rows.error_row(row, f'{self._owner} ({vector.error_type}): {vector.msg}',
                          vector.error_type))
    else:
      yield _rows.with_fields(row, **{self._output: list(vector)})
