"""GenerateText: LLM inference on a prompt field, on Beam's RunInference."""
from typing import Any, Mapping, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler
from apache_beam.ml.inference.base import RunInference

from beam_llm import _config
from beam_llm import _rows
from beam_llm import handlers
from beam_llm import lineage as lineage_policy
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import GenerationFailure
from beam_llm.handlers.base import RowPrompt

_OWNER = 'GenerateText'


class GenerateText(beam.PTransform):
  """Runs an LLM on each row's prompt and adds the generated text.

  Rows are batched (Beam's RunInference), the model is loaded once per worker
  process (or once per machine with `large_model`), and only the newly
  generated text goes into the output field, never the echoed prompt. A row
  the model cannot answer (empty or over-long prompt, a failure of its own)
  goes to the error output on its own: its batch-mates still come out.

  Args:
    model_handler: The backend, as `{type: <backend>, config: {...}}`.
      On the worker: `HuggingFace` (transformers causal LMs and T5-style
      seq2seq) and `KerasHub` (keras-hub causal LMs such as Gemma; `KerasNLP` is an alias). Remote,
      with retries, throttling, concurrency and a response cache
      (docs/remote.md): `OpenAICompatible`, `VertexAI`, `Gemini`. Every
      option of every backend: docs/transforms.md.
    prompt: Input field holding the prompt: text, or a list of
      `{role, content}` messages from RenderPrompt's chat form. Defaults to
      `prompt`.
    output: Name of the field that receives the generated text. Defaults to
      `response`.
    max_new_tokens: Most tokens to generate per row. Defaults to 256.
    temperature: Sampling temperature; 0 (or unset) means greedy decoding.
    top_p: Nucleus sampling probability mass.
    top_k: Sample only from the k most likely tokens.
    do_sample: Sample instead of greedy decoding. Defaults to true when
      temperature, top_p or top_k is set, else false.
    generation_config: Further generation options passed to the backend as
      they are (e.g. `repetition_penalty`, `num_beams` for HuggingFace).
    response_schema: A JSON Schema the answer must follow. Generation is
      constrained to it (HuggingFace: token masking with llguidance;
      OpenAICompatible and Gemini: the API's structured output; KerasHub
      and VertexAI refuse it at build time), so the output always parses
      and validates, unless `max_new_tokens` cuts it off, which ParseJSON
      reports as `truncated`. Give at most one of `response_schema` and
      `response_schema_file`.
    response_schema_file: Path of a JSON file holding that schema.
    min_batch_size: Fewest rows per model call (models on the worker;
      remote backends send each row as it comes). Models on the worker
      batch by tokens: rows are sorted by prompt length and each call is
      filled up to a token budget sized from the device (docs/local_models.md,
      "Batching"); this bound wins over the budget.
    max_batch_size: Most rows per model call (models on the worker).
    max_batch_tokens: Token budget per model call on the worker: rows x
      (longest prompt + max_new_tokens). Defaults to what the device holds
      (on a GPU, sized from the memory free after the model loads; on CPU,
      16,384).
    max_batch_duration_secs: Longest a row waits for its batch to fill
      (streaming).
    large_model: Load one model per machine, shared by all worker processes,
      instead of one per process.
    model_copies: Exact number of model copies per machine (implies sharing).
    confidence_output: Name of a field that receives the model's confidence
      in its answer: the probability of the generated tokens (with
      `response_schema`, among the tokens the schema allows), from 0 to 1.
      HuggingFace computes it; OpenAICompatible (and VLLM) ask the server
      for `logprobs`; other backends refuse it at build time. Defaults to
      none.
    usage_fields: Add the row's token counts as fields `input_tokens` and
      `output_tokens`: those the service reports (remote backends), or the
      prompt's and the answer's tokens (models on the worker); null when a
      service reports none. Defaults to false.
    lineage: Add (or fill in) the row field `lineage` with the run id, the
      model (`backend`, `model`, `revision`, `endpoint`; never an API key)
      and `response_schema_hash`, keeping the `template_hash` RenderPrompt
      put there (docs/lineage.md). Defaults to false.
    error_handling: `{output: <name>}` sends rows that fail to generate to
      that output as Beam YAML error rows (`element`, `msg`, `stack`,
      `error_type`), instead of failing the pipeline. Error types:
      `bad_prompt`, `prompt_too_long`, `generation`, and for remote
      backends, once retries are exhausted, `rate_limited`, `timeout`,
      `server_error`, `connection_error`, `bad_response` (an answer cut
      off or without text), `deadline_exceeded`, and, never retried,
      `client_error` (the service refused the request as invalid). A bug
      or a config error is not an error row: it fails the pipeline.
  """
  @_config.checks_options(_OWNER)
  def __init__(
      self,
      model_handler: Mapping[str, Any],
      prompt: str = 'prompt',
      output: str = 'response',
      max_new_tokens: int = 256,
      temperature: Optional[float] = None,
      top_p: Optional[float] = None,
      top_k: Optional[int] = None,
      do_sample: Optional[bool] = None,
      generation_config: Optional[Mapping[str, Any]] = None,
      response_schema: Optional[Mapping[str, Any]] = None,
      response_schema_file: Optional[str] = None,
      min_batch_size: Optional[int] = None,
      max_batch_size: Optional[int] = None,
      max_batch_tokens: Optional[int] = None,
      max_batch_duration_secs: Optional[int] = None,
      large_model: bool = False,
      model_copies: Optional[int] = None,
      usage_fields: bool = False,
      lineage: bool = False,
      error_handling: Optional[Mapping[str, Any]] = None,
      confidence_output: Optional[str] = None):
    super().__init__()
    options = self.options
    for key in ('max_new_tokens', 'min_batch_size', 'max_batch_size',
                'max_batch_tokens', 'model_copies'):
      value = getattr(options, key)
      if value is not None and value < 1:
        _config.fail(_OWNER, key, f'must be at least 1, got {value}')
    if (min_batch_size and max_batch_size and min_batch_size > max_batch_size):
      _config.fail(_OWNER, 'min_batch_size',
                   f'({min_batch_size}) exceeds max_batch_size ({max_batch_size})')
    generation = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        do_sample=do_sample,
        generation_config=dict(generation_config or {}),
        response_schema=None,
        confidence=confidence_output is not None)
    if response_schema is not None or response_schema_file is not None:
      generation['response_schema'] = _config.load_json_schema(
          _OWNER, response_schema, response_schema_file, key='response_schema')
    batching = {
        k: getattr(options, k)
        for k in ('min_batch_size', 'max_batch_size', 'max_batch_tokens',
                  'max_batch_duration_secs', 'large_model', 'model_copies')
        if getattr(options, k) is not None
    }
    self._handler = handlers.create_handler(
        _OWNER, model_handler, generation, batching)
    if confidence_output is not None and not self._handler.supports_confidence:
      _config.fail(_OWNER, 'confidence_output',
                   f'is not supported by the {self._handler.backend} backend '
                   '(it gives no token probabilities); use HuggingFace, '
                   'OpenAICompatible or VLLM')
    self._confidence_output = confidence_output
    self._prompt = prompt
    self._output = output
    self._max_new_tokens = max_new_tokens
    self._usage_fields = usage_fields
    self._lineage = None
    if lineage:
      schema = generation['response_schema']
      self._lineage = {
          **self._handler.describe_model(),
          'response_schema_hash':
              None if schema is None else lineage_policy.json_hash(schema)}
    self._error_output = _config.error_output_name(_OWNER, error_handling)

  def check_at_build(self) -> None:
    """Checks that need no input (the model can be had); `beam-llm validate`
    calls it too. Raises to fail."""
    self._handler.check_at_build()

  @property
  def lineage(self) -> Optional[dict]:
    """The lineage values this GenerateText adds (backend, model, schema;
    no run id), or None when `lineage` is off."""
    return self._lineage

  @property
  def handler(self):
    """The backend built (and checked) from `model_handler` and the
    generation options; operators that call the model themselves use it."""
    return self._handler

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    _rows.require_field(_OWNER, 'prompt', self._prompt, fields)
    # Before any model loads: a hub model that cannot be fetched fails now.
    self.check_at_build()
    if fields is not None:
      self._handler.check_input_fields([name for name, _ in fields])
    prompt = self._prompt
    if self._handler.wants_row_fields:
      key = lambda row: (row, RowPrompt(getattr(row, prompt, None), _rows.as_dict(row)))
    else:
      key = lambda row: (row, getattr(row, prompt, None))
    keyed = pcoll | 'KeyByRow' >> beam.Map(key)
    batch = getattr(self._handler, 'batch_transform', lambda: None)()
    from beam_llm.cli import estimate
    if estimate.ACTIVE:  # `beam-llm validate --estimate`: count, not generate.
      results = keyed | 'Estimate' >> beam.ParDo(estimate.CountPromptTokens(
          self._handler, self._max_new_tokens))
    elif batch is not None:  # `batch_api: true`: the provider's Batch API.
      results = keyed | 'BatchAPI' >> batch
    elif getattr(self._handler, 'flows_rows', False):
      # Remote backends: rows flow to the service without batch barriers.
      results = keyed | 'Generate' >> beam.ParDo(self._handler.flow_dofn())
    else:
      results = keyed | 'RunInference' >> RunInference(
          KeyedModelHandler(self._handler))
    added = [(self._output, str)]
    if self._confidence_output:
      added.append((self._confidence_output, Optional[float]))
    if self._usage_fields:
      added += [('input_tokens', Optional[int]), ('output_tokens', Optional[int])]
    lineage = None
    if self._lineage is not None:
      lineage = {**self._lineage,
                 'run_id': lineage_policy.run_id(pcoll.pipeline)}
      added.append((lineage_policy.FIELD, lineage_policy.LINEAGE))
    return _rows.split_outputs(
        results,
        'Collect',
        _CollectDoFn(self._output, self._usage_fields, lineage,
                     self._confidence_output),
        _rows.row_type_with(fields, added),
        self._error_output,
        element_type=pcoll.element_type)


class _CollectDoFn(beam.DoFn):
  """(row, PredictionResult) -> the row with its response, or an error row."""
  def __init__(self, output: str, usage_fields: bool,
               lineage: Optional[dict] = None,
               confidence_output: Optional[str] = None):
    self._output = output
    self._confidence_output = confidence_output
    self._lineage = lineage
    self._usage_fields = usage_fields

  def process(self, keyed):
    row, result = keyed
    response = result.inference
    if isinstance(response, GenerationFailure):
      yield from _rows.tag_error(
          _rows.error_row(
              row, f'{_OWNER} ({response.error_type}): {response.msg}',
              response.error_type))
    else:
      added = {}
      if self._confidence_output:
        added[self._confidence_output] = getattr(response, 'confidence', None)
      if isinstance(response, Generation):
        if self._usage_fields:
          added = {'input_tokens': response.input_tokens,
                   'output_tokens': response.output_tokens}
        response = response.text
      elif self._usage_fields:
        added = {'input_tokens': None, 'output_tokens': None}
      if self._lineage:
        added[lineage_policy.FIELD] = lineage_policy.merged(row, self._lineage)
      yield _rows.with_fields(row, **{self._output: response}, **added)
