"""HuggingFace transformers backend: causal LMs and encoder-decoders (T5).

torch and transformers are imported only on the worker, in load_model.
"""
import logging
import os
import re
from typing import Literal, Optional

from beam_llm.generation_params import GenerationParams
from beam_llm.handlers.base import fit_prompts
from beam_llm.handlers.base import prompt_token_counts
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import confidence_of
from beam_llm.handlers.base import LocalModelHandler
from beam_llm.handlers.json_constraint import compile_json_schema
from beam_llm.handlers import token_batching

_LOG = logging.getLogger('beam_llm.GenerateText')
_OWNER = 'GenerateText'
_HUB_ID = re.compile(r'^[\w.-]+(/[\w.-]+)?$')


class ModelUnavailable(RuntimeError):
  pass


def _unavailable_message(model: str, why: str) -> str:
  if not _HUB_ID.match(model):  # A path: `hf download /tmp/x` would not help.
    return (
        f"HuggingFace model {model!r} is not available: {why}.\n"
        "Check the path: it must be a model directory saved with "
        "save_pretrained (or fetched on a connected machine with `hf download "
        "REPO_ID --local-dir DIR`)")
  return (
      f"HuggingFace model {model!r} is not available: {why}.\n"
      "To run without the hub, point the pipeline at a local model directory "
      "(one saved with save_pretrained, or fetched on a connected machine "
      f"with `hf download {model} --local-dir DIR`), e.g.\n"
      "  --jinja_variables='{\"model\": \"/path/to/DIR\"}'")


class HuggingFaceHandler(LocalModelHandler):
  """`model_handler: {type: HuggingFace, config: {...}}`.

  Args:
    model: A hub model id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local
      directory holding a model saved with `save_pretrained`.
    tokenizer: Hub id or directory of the tokenizer, if not the model's.
    task: `causal` (AutoModelForCausalLM), `seq2seq` (AutoModelForSeq2SeqLM,
      e.g. T5) or `auto` (read from the model's config). Defaults to auto.
    device: `cpu`, `cuda` or `auto` (cuda when available). Defaults to auto.
    dtype: `auto` (on cpu: bfloat16 where the CPU has bfloat16 units,
      AVX512-BF16 or AMX, else float32; on cuda: the checkpoint's dtype),
      `float32`, `float16` or `bfloat16`.
    use_chat_template: Format a text prompt with the tokenizer's chat template
      as one user message. Chat prompts (RenderPrompt `messages`) always use
      it. Defaults to false.
    max_input_tokens: Prompts longer than this go to the error output instead
      of being cut. Defaults to the model's context length.
    revision: Hub revision (branch, tag or commit) to load.
    trust_remote_code: Allow model code from the hub. Defaults to false.
  """
  backend = 'HuggingFace'
  supports_response_schema = True
  supports_confidence = True

  def __init__(
      self,
      *,
      model: str,
      tokenizer: Optional[str] = None,
      task: Literal['auto', 'causal', 'seq2seq'] = 'auto',
      device: Literal['auto', 'cpu', 'cuda'] = 'auto',
      dtype: Literal['auto', 'float32', 'float16', 'bfloat16'] = 'auto',
      use_chat_template: bool = False,
      max_input_tokens: Optional[int] = None,
      revision: Optional[str] = None,
      trust_remote_code: bool = False,
      generation: Optional[dict] = None,
      batching: Optional[dict] = None):
    super().__init__(generation or {}, batching or {})
    self._model_id = model
    self._tokenizer_id = tokenizer or model
    self._task = task
    self._device = device
    self._dtype = dtype
    self._use_chat_template = use_chat_template
    self._max_input_tokens = max_input_tokens
    self._revision = revision
    self._trust_remote_code = trust_remote_code

  def describe(self) -> str:
    return f'HuggingFace {self._model_id}'

  def describe_model(self) -> dict:
    return {**super().describe_model(), 'model': self._model_id,
            'revision': self._revision}

  def check_at_build(self) -> None:
    for name in {self._model_id, self._tokenizer_id}:
      why = why_unavailable(name, self._revision)
      if why:
        raise ModelUnavailable(f'{self.owner}: ' + _unavailable_message(name, why))

  def _load(self) -> 'HuggingFaceModel':
    import torch
    import transformers

    from beam_llm import staging
    device = self._device
    if device == 'auto':
      device = 'cuda' if torch.cuda.is_available() else 'cpu'
    elif device == 'cuda' and not torch.cuda.is_available():
      raise RuntimeError(f'{self.owner}: device cuda was asked for, but torch '
                         'sees no CUDA device on this worker')
    common = dict(
        revision=self._revision, trust_remote_code=self._trust_remote_code)
    try:
      model_path = staging.local_copy(self._model_id)
      tokenizer_path = (
          model_path if self._tokenizer_id == self._model_id else
          staging.local_copy(self._tokenizer_id))
      config = transformers.AutoConfig.from_pretrained(model_path, **common)
      tokenizer = transformers.AutoTokenizer.from_pretrained(
          tokenizer_path, **common)
      seq2seq = (
          self._task == 'seq2seq' or
          self._task == 'auto' and getattr(config, 'is_encoder_decoder', False))
      cls = (
          transformers.AutoModelForSeq2SeqLM
          if seq2seq else transformers.AutoModelForCausalLM)
      dtype = self._dtype
      if dtype == 'auto':
        dtype = cpu_auto_dtype(torch) if device == 'cpu' else 'auto'
      else:
        dtype = getattr(torch, dtype)
      model = cls.from_pretrained(
          model_path, config=config, dtype=dtype, **common)
    except OSError as exn:
      raise ModelUnavailable(
          f'{self.owner}: ' + _unavailable_message(self._model_id, str(exn))) from None
    model.to(device).eval()
    if not seq2seq:
      tokenizer.padding_side = 'left'  # Generation continues from the right.
    if tokenizer.pad_token is None:
      tokenizer.pad_token = tokenizer.eos_token
    return HuggingFaceModel(
        tokenizer=tokenizer,
        model=model,
        device=device,
        seq2seq=seq2seq,
        max_input_tokens=self._max_input_tokens or _context_length(
            config, tokenizer, seq2seq, self._max_new_tokens()),
        constraint=compile_json_schema(
            self._generation.get('response_schema'), tokenizer, config,
            getattr(model, 'generation_config', None)),
        use_chat_template=self._use_chat_template,
        generate_kwargs=self._generate_kwargs(tokenizer),
        token_budget=_token_budget(torch, model, config, device),
        confidence=bool(self._generation.get('confidence')))

  def _max_new_tokens(self) -> int:
    return int(self._generation.get('max_new_tokens') or 0)

  def _generate_kwargs(self, tokenizer) -> dict:
    # Greedy vs sampling is decided once, for every backend.
    params = GenerationParams.of(self._generation)
    kwargs = {'do_sample': params.sampling}
    if params.max_new_tokens:
      kwargs['max_new_tokens'] = params.max_new_tokens
    if params.sampling:
      kwargs.update(params.sampling_options())
    kwargs['pad_token_id'] = tokenizer.pad_token_id
    return {**kwargs, **params.generation_config}


class HuggingFaceModel:
  """A loaded transformers model behind `generate_batch` (see
  LocalModelHandler for why everything goes through that one method)."""
  def __init__(self, *, tokenizer, model, device, seq2seq: bool,
               max_input_tokens: Optional[int], constraint,
               use_chat_template: bool,
               generate_kwargs: dict, token_budget: int,
               confidence: bool = False):
    self.tokenizer = tokenizer
    self.confidence = confidence  # Answers carry their token probability.
    self.model = model
    self.device = device
    self.seq2seq = seq2seq
    self.max_input_tokens = max_input_tokens
    self.constraint = constraint  # JsonSchemaConstraint for response_schema.
    self.use_chat_template = use_chat_template
    self.generate_kwargs = generate_kwargs
    self.token_budget = token_budget  # Padded tokens per generate call.
    # Schema masks computed during the forward pass: on a GPU only, where
    # the CPU is otherwise idle meanwhile (on CPU they would compete).
    self.overlap_masks = device == 'cuda'

  def token_counts(self, prompts: list) -> list:
    return prompt_token_counts(prompts, self._as_text, self._count_tokens)

  def batch_token_budget(self) -> int:
    return self.token_budget

  def _count_tokens(self, texts: list) -> list:
    # Never empty: both callers skip empty batches (tokenizers fail on them).
    return [len(ids) for ids in self.tokenizer(texts)['input_ids']]

  def generate_batch(self, prompts: list) -> list:
    responses, ok = fit_prompts(
        prompts, self._as_text, self._count_tokens, self.max_input_tokens)
    if not ok:
      return responses
    for (i, _, _), response in zip(ok, self._generate_fitting_memory(ok)):
      responses[i] = response
    return responses

  def _generate_fitting_memory(self, ok: list) -> list:
    """Generates for (index, text, tokens) rows; a GPU out of memory halves
    the budget for the rest of the run and splits the call in two."""
    import torch
    try:
      return self._generate(ok)
    except torch.OutOfMemoryError:
      if len(ok) == 1:
        raise
      torch.cuda.empty_cache()
      self.token_budget = max(self.token_budget // 2, 1)
      _LOG.warning('GenerateText: the GPU ran out of memory on %d rows; '
                   'batches now hold at most %d tokens', len(ok),
                   self.token_budget)
      half = len(ok) // 2
      return (self._generate_fitting_memory(ok[:half]) +
              self._generate_fitting_memory(ok[half:]))

  def _generate(self, ok: list) -> list:
    import torch
    enc = self.tokenizer([t for _, t, _ in ok], return_tensors='pt',
                         padding=True).to(self.device)
    kwargs = dict(self.generate_kwargs)
    if self.constraint is not None:
      # One processor per generate call: it keeps per-row parser state.
      processor = self.constraint.logits_processor(self.overlap_masks)
      kwargs['logits_processor'] = [processor]
      if self.overlap_masks:
        kwargs['stopping_criteria'] = [processor.prefetch]
    if self.confidence:
      # The scores after the logits processors: with response_schema, the
      # probability among the tokens the schema allows.
      kwargs.update(output_scores=True, return_dict_in_generate=True)
    with torch.inference_mode():
      result = self.model.generate(**enc, **kwargs)
      out = result.sequences if self.confidence else result
      logprobs = None
      if self.confidence:
        logprobs = self.model.compute_transition_scores(
            out, result.scores, normalize_logits=True)
    if not self.seq2seq:
      out = out[:, enc['input_ids'].shape[1]:]  # Drop the echoed prompt.
    # Per row: its prompt's tokens (padding excluded) and the tokens it
    # generated (the padding after a row that stopped early excluded).
    input_tokens = enc['attention_mask'].sum(dim=1).tolist()
    generated = out != self.tokenizer.pad_token_id
    output_tokens = generated.sum(dim=1).tolist()
    decoded = self.tokenizer.batch_decode(out, skip_special_tokens=True)
    confidences = [None] * len(decoded)
    if logprobs is not None:
      steps = logprobs.shape[1]  # The scores cover the generated steps only.
      confidences = [
          confidence_of(row[mask[-steps:]].float().tolist())
          for row, mask in zip(logprobs, generated)]
    return [Generation(text.strip(), int(n_in), int(n_out), confidence)
            for text, n_in, n_out, confidence in zip(
                decoded, input_tokens, output_tokens, confidences)]

  def _as_text(self, prompt) -> str:
    if isinstance(prompt, str):
      if not self.use_chat_template:
        return prompt
      prompt = [{'role': 'user', 'content': prompt}]
    if not getattr(self.tokenizer, 'chat_template', None):
      # transformers 5 no longer raises here; it returns text the tokenizer
      # then fails on (IndexError) for the whole batch.
      raise ValueError(
          'this model has no chat template: send plain text with '
          'use_chat_template: false (GenerateText) or chat: false '
          '(Classify, Extract, SemanticFilter), or use a chat model')
    return self.tokenizer.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=True)


def cpu_auto_dtype(torch):
  """`dtype: auto` on CPU: bfloat16 where the CPU has bfloat16 units
  (AVX512-BF16 or AMX), where it is ~1.6x faster than float32
  (bench/RESULTS.md); float32 elsewhere, where bfloat16 is emulated."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = next((line for line in f if line.startswith('flags')), '').split()
  except OSError:  # Not Linux: no way to tell cheaply, stay exact.
    return torch.float32
  bf16 = 'avx512_bf16' in flags or 'amx_bf16' in flags
  return torch.bfloat16 if bf16 else torch.float32


def _token_budget(torch, model, config, device: str) -> int:
  if device != 'cuda':
    return token_batching.CPU_BATCH_TOKENS
  free, _ = torch.cuda.mem_get_info()
  return token_batching.cuda_token_budget(
      config, model.dtype.itemsize, free)


def _context_length(config, tokenizer, seq2seq: bool, max_new_tokens: int):
  limit = getattr(config, 'max_position_embeddings', None)
  if limit is None and seq2seq:
    limit = tokenizer.model_max_length
  if not limit or limit > 10**7:  # Tokenizers use a huge sentinel for "none".
    return None
  return limit if seq2seq else max(limit - max_new_tokens, 1)


def why_unavailable(model: str, revision: Optional[str]) -> Optional[str]:
  """Build-time check: None if `model` can load here, else why not.

  A hub id that is neither cached nor reachable fails now, in seconds, rather
  than on a worker after a long download timeout.
  """
  if os.path.isdir(model):
    if os.path.exists(os.path.join(model, 'config.json')) or os.path.exists(
        os.path.join(model, 'tokenizer_config.json')):
      return None
    return f'directory {model!r} holds no config.json (not a saved model)'
  if '://' in model:
    return None  # Remote paths are read on the worker.
  if not _HUB_ID.match(model) or model.startswith(('.', '/')):
    return f'no such local directory {model!r}'
  import huggingface_hub
  cached = huggingface_hub.try_to_load_from_cache(
      model, 'config.json', revision=revision)
  if isinstance(cached, str):
    return None
  if huggingface_hub.constants.HF_HUB_OFFLINE:
    return 'it is not in the local cache and HF_HUB_OFFLINE is set'
  from beam_llm import _config
  if not _config.reachability_checks():
    return None
  try:
    huggingface_hub.model_info(model, revision=revision, timeout=10)
  except Exception as exn:  # pylint: disable=broad-except
    name = type(exn).__name__
    if 'NotFound' in name:
      return 'the hub has no such model (check the id)'
    if 'Gated' in name:
      return 'the model is gated: accept its licence and log in (hf auth login)'
    return (
        'it is not in the local cache and the HuggingFace hub could not be '
        f'reached ({name})')
  return None
