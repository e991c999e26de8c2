"""KerasHub backend (formerly KerasNLP): Gemma and other keras-hub causal LMs.

Keras reads its backend (torch / jax / tensorflow) once, at import, from
KERAS_BACKEND; so keras is imported only on the worker, in load_model, after
the backend has been chosen.
"""
import inspect
import os
import sys
from typing import Literal, Optional

from beam_llm.generation_params import GenerationParams
from beam_llm import staging
from beam_llm.handlers import keras_presets as presets
from beam_llm.handlers import token_batching
from beam_llm.handlers.base import fit_prompts
from beam_llm.handlers.base import prompt_token_counts
from beam_llm.handlers.base import Generation
from beam_llm.handlers.base import LocalModelHandler

_OWNER = 'GenerateText'

# Gemma's turn format. Gemma has no system role: a system message is put at
# the top of the first user turn, as Google's own template does.
GEMMA_CHAT_TEMPLATE = (
    "{% set ns = namespace(system='', used=false) %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = m['content'] + '\n\n' %}"
    "{% else %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{% if not ns.used %}{{ ns.system }}{% set ns.used = true %}{% endif %}"
    "{{ m['content'] }}<end_of_turn>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


class KerasHubHandler(LocalModelHandler):
  """`model_handler: {type: KerasHub, config: {...}}` (`KerasNLP`, its name
  from keras-nlp days, works too).

  Args:
    preset: A keras-hub preset name (e.g. gemma2_instruct_2b_en; Kaggle
      presets need KAGGLE_USERNAME / KAGGLE_KEY), a `kaggle://` or `hf://`
      handle, a local preset directory (from `save_to_preset`), or a preset
      directory on any Beam filesystem (gs://, s3://, ...), copied once per
      worker machine.
    model_class: The keras-hub causal LM class. Defaults to GemmaCausalLM.
    keras_backend: `auto`, `torch`, `jax` or `tensorflow`. Keras picks its
      backend once per process, when it is first imported, from the
      KERAS_BACKEND environment variable; TensorFlow (which keras-hub
      installs) imports Keras, and Beam YAML imports TensorFlow at start-up,
      so in a full install Keras is usually loaded before the pipeline is
      built. `auto` uses the backend Keras already runs, else KERAS_BACKEND,
      else torch. Naming another backend than the loaded one fails at build
      time: set KERAS_BACKEND before starting the pipeline instead.
      Defaults to auto.
    device: `auto`, `cpu` or `cuda` (torch and jax backends). Defaults to
      auto.
    dtype: Weights dtype, e.g. `bfloat16` or `float32`. Defaults to the
      preset's.
    sampler: keras-hub sampler name (`greedy`, `top_k`, `top_p`, `random`,
      `beam`, `contrastive`). Defaults to greedy, or to the sampler that
      GenerateText's temperature / top_k / top_p imply.
    max_length: Longest sequence (prompt plus generated tokens) per row.
      Prompts that leave no room for new tokens go to the error output.
      Defaults to the model's sequence length. keras-hub generates a batch to
      one length (the longest prompt plus max_new_tokens), so a row with a
      shorter prompt may get a few more new tokens than max_new_tokens.
    use_chat_template: Format a text prompt as one user turn of
      `chat_template`. Chat prompts (RenderPrompt `messages`) always use it.
      Defaults to false.
    chat_template: Jinja template turning `messages` into the model's prompt
      text. Defaults to Gemma's turn format.
  """
  backend = 'KerasHub'

  def __init__(
      self,
      *,
      preset: str,
      model_class: str = 'GemmaCausalLM',
      keras_backend: Literal['auto', 'torch', 'jax', 'tensorflow'] = 'auto',
      device: Literal['auto', 'cpu', 'cuda'] = 'auto',
      dtype: Optional[str] = None,
      sampler: Optional[str] = None,
      max_length: Optional[int] = None,
      use_chat_template: bool = False,
      chat_template: str = GEMMA_CHAT_TEMPLATE,
      generation: Optional[dict] = None,
      batching: Optional[dict] = None):
    super().__init__(generation or {}, batching or {})
    self._preset = preset
    self._model_class = model_class
    self._keras_backend = keras_backend
    self._device = device
    self._dtype = dtype
    self._sampler = sampler
    self._max_length = max_length
    self._use_chat_template = use_chat_template
    self._chat_template = chat_template

  def describe(self) -> str:
    return f'KerasHub {self._preset}'

  def describe_model(self) -> dict:
    return {**super().describe_model(), 'model': self._preset}

  def check_at_build(self) -> None:
    loaded = _loaded_keras_backend()
    if loaded and self._keras_backend not in ('auto', loaded):
      raise RuntimeError(
          f'{self.owner}: keras_backend is {self._keras_backend!r}, but Keras is '
          f'already loaded in this process with the {loaded!r} backend '
          '(TensorFlow, which Beam YAML imports at start-up, loads Keras). '
          'Keras cannot switch backends: set the environment variable '
          f'KERAS_BACKEND={self._keras_backend} before starting the '
          'pipeline, or use keras_backend: auto')
    why = presets.why_unavailable(self._preset)
    if why:
      raise presets.PresetUnavailable(
          f'{self.owner}: KerasHub preset {self._preset!r} is not available: '
          f'{why}.\n' + presets.HOW_TO_FIX)

  def _load(self) -> 'KerasModel':
    _choose_keras_backend(self.owner, self._keras_backend, self._device)
    import keras_hub
    cls = getattr(keras_hub.models, self._model_class, None)
    if cls is None:
      raise ValueError(f'{self.owner}: keras_hub.models has no {self._model_class}')
    kwargs = {'dtype': self._dtype} if self._dtype else {}
    lm = cls.from_preset(staging.local_copy(self._preset), **kwargs)
    lm.compile(sampler=self._make_sampler(keras_hub))
    return KerasModel(lm, self._generation.get('max_new_tokens') or 256,
                      self._max_length, self._use_chat_template,
                      self._chat_template)

  def _make_sampler(self, keras_hub):
    # Greedy vs sampling is decided once, for every backend; a named
    # `sampler` still gets GenerateText's temperature / top_k / top_p.
    params = GenerationParams.of(self._generation)
    options = params.sampling_options() if params.sampling else {}
    if self._sampler:
      cls = type(keras_hub.samplers.get(self._sampler))
    elif not params.sampling:
      cls = keras_hub.samplers.GreedySampler
    elif params.top_p is not None:
      cls = keras_hub.samplers.TopPSampler
    elif params.top_k is not None:
      cls = keras_hub.samplers.TopKSampler
    else:
      cls = keras_hub.samplers.RandomSampler
    accepted = inspect.signature(cls.__init__).parameters
    anything = any(p.kind == p.VAR_KEYWORD for p in accepted.values())
    names = {'temperature': 'temperature', 'top_p': 'p', 'top_k': 'k'}
    return cls(**{names[k]: v for k, v in options.items()
                  if names[k] in accepted or (anything and k == 'temperature')})


def _loaded_keras_backend() -> Optional[str]:
  """The backend of a Keras already imported in this process, else None."""
  keras = sys.modules.get('keras')
  config = getattr(keras, 'config', None)
  return config.backend() if config is not None else None


def _choose_keras_backend(owner: str, backend: str, device: str) -> None:
  loaded = _loaded_keras_backend()
  if backend == 'auto':
    backend = loaded or os.environ.get('KERAS_BACKEND') or 'torch'
  if loaded:
    if loaded != backend:
      raise RuntimeError(
          f'{owner}: keras is already loaded with the {loaded!r} backend in '
          f'this worker (asked for {backend!r}); set KERAS_BACKEND={backend} '
          'in the worker environment, or use keras_backend: auto')
    return
  os.environ['KERAS_BACKEND'] = backend
  if device != 'auto':
    if backend == 'torch':
      os.environ['KERAS_TORCH_DEVICE'] = device
    elif backend == 'jax':
      os.environ['JAX_PLATFORMS'] = 'cpu' if device == 'cpu' else 'cuda'
    else:
      raise ValueError(
          f'{owner}: device {device!r} is only supported on the torch and jax '
          'Keras backends; leave it at auto for tensorflow')


class KerasModel:
  """A loaded keras-hub causal LM behind `generate_batch` (see
  LocalModelHandler for why everything goes through that one method)."""
  def __init__(self, lm, max_new_tokens: int, max_length: Optional[int],
               use_chat_template: bool, chat_template: str):
    self.lm = lm
    self.max_new_tokens = max_new_tokens
    self.max_length = max_length or lm.preprocessor.sequence_length
    self.use_chat_template = use_chat_template
    self._chat = _compile_chat_template(chat_template)
    self.token_budget = None  # Sized on first use (batch_token_budget).

  def _as_text(self, prompt) -> str:
    if isinstance(prompt, str) and not self.use_chat_template:
      return prompt
    messages = [{'role': 'user', 'content': prompt}] if isinstance(
        prompt, str) else prompt
    return self._chat.render(messages=messages, add_generation_prompt=True)

  def _count_tokens(self, texts: list) -> list:
    tokenizer = self.lm.preprocessor.tokenizer
    # +1: the preprocessor adds a start token.
    return [len(tokenizer(t)) + 1 for t in texts]

  def token_counts(self, prompts: list) -> list:
    return prompt_token_counts(prompts, self._as_text, self._count_tokens)

  def batch_token_budget(self) -> int:
    if self.token_budget is None:
      self.token_budget = _token_budget(self.lm)
    return self.token_budget

  def generate_batch(self, prompts: list) -> list:
    tokenizer = self.lm.preprocessor.tokenizer
    # Keep room for one new token.
    responses, ok = fit_prompts(
        prompts, self._as_text, self._count_tokens, self.max_length - 1)
    if not ok:
      return responses
    # Room for max_new_tokens after the longest prompt, within max_length.
    length = min(max(n for _, _, n in ok) + self.max_new_tokens, self.max_length)
    outputs = self.lm.generate([t for _, t, _ in ok], max_length=length,
                               strip_prompt=True)
    for (i, _, n_in), text in zip(ok, outputs):
      text = str(text).strip()
      # keras-hub returns text only: the answer's tokens are counted again.
      responses[i] = Generation(text, n_in, len(tokenizer(text)))
    return responses


def _token_budget(lm) -> int:
  """Padded tokens per generate call: from the free GPU memory on the torch
  backend with CUDA, else the CPU default."""
  import keras
  if keras.config.backend() == 'torch':
    import torch
    if torch.cuda.is_available():
      free, _ = torch.cuda.mem_get_info()
      dtype_bytes = 2 if '16' in str(lm.backbone.dtype_policy.compute_dtype) else 4
      return token_batching.cuda_token_budget(lm.backbone, dtype_bytes, free)
  return token_batching.CPU_BATCH_TOKENS


def _compile_chat_template(source: str):
  from jinja2 import sandbox
  return sandbox.ImmutableSandboxedEnvironment().from_string(source)
