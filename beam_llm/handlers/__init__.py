"""GenerateText backends, by the name used in `model_handler: {type: ...}`.

Each backend lives in its own module, imported only when a pipeline uses it,
so `import beam_llm` never pulls in torch, keras or a cloud client.
"""
import importlib
from typing import Any, Mapping

from beam_llm import _config

# type name -> "module:class". Later backends register here.
BACKENDS = {
    'HuggingFace': 'beam_llm.handlers.huggingface:HuggingFaceHandler',
    'KerasHub': 'beam_llm.handlers.keras_hub_lm:KerasHubHandler',
    'OpenAICompatible':
        'beam_llm.handlers.openai_compatible:OpenAICompatibleHandler',
    'VertexAI': 'beam_llm.handlers.vertex_ai:VertexAIHandler',
    'Gemini': 'beam_llm.handlers.gemini:GeminiHandler',
    'VLLM': 'beam_llm.handlers.vllm:VLLMHandler',
}

# type name -> (the setup.cfg extra that installs it, modules it imports on
# the worker). Checked at build time, so a missing client library is one
# message naming the extra, not an ImportError on a worker.
BACKEND_EXTRAS = {
    'HuggingFace': ('hf', ('torch', 'transformers', 'llguidance')),
    'KerasHub': ('keras', ('keras', 'keras_hub')),
    'OpenAICompatible': ('openai', ('openai', 'httpx')),
    'VertexAI': ('vertex', ('google.cloud.aiplatform',)),
    'Gemini': ('gemini', ('google.genai', 'httpx')),
    # The client side only: vLLM itself runs in an interpreter of its own
    # (the backend's `python` option), checked by VLLMHandler.check_at_build.
    'VLLM': ('vllm', ('openai', 'httpx')),
}


# Older names that keep working: keras-hub was called keras-nlp until 2024.
ALIASES = {'KerasNLP': 'KerasHub'}


def all_backends() -> dict:
  """Built-in backends and those other packages add (beam_llm.extensions)."""
  from beam_llm import extensions
  return {**extensions.backends(), **BACKENDS}


def backend_class(owner: str, name: Any):
  name = ALIASES.get(name, name)
  if name in BACKENDS:
    if name in BACKEND_EXTRAS:
      extra, modules = BACKEND_EXTRAS[name]
      _config.require_extra(owner, f'the {name} backend', extra, modules)
    module, cls = BACKENDS[name].split(':')
    return getattr(importlib.import_module(module), cls)
  from beam_llm import extensions
  if isinstance(name, str) and name in extensions.backends():
    cls = extensions.load_backend(name)
    from beam_llm.handlers.base import TextGenerationHandler
    if not (isinstance(cls, type) and issubclass(cls, TextGenerationHandler)):
      _config.fail(
          owner, 'model_handler.type',
          f'names backend {name!r}, whose entry point '
          f'({extensions.backends()[name]}) is not a TextGenerationHandler')
    return cls
  _config.fail(
      owner,
      'model_handler.type',
      f'names an unknown backend {name!r}; choose one of '
      f'{", ".join(sorted(all_backends()))}')


def create_handler(
    owner: str,
    spec: Mapping[str, Any],
    generation: Mapping[str, Any],
    batching: Mapping[str, Any]):
  """Builds the backend named by a YAML `model_handler: {type, config}`."""
  _config.check_model_handler_spec(owner, spec, 'HuggingFace')
  cls = backend_class(owner, spec['type'])
  if generation.get('response_schema') and not cls.supports_response_schema:
    _config.fail(owner, 'response_schema',
                 f'is not supported by the {spec["type"]} backend')
  config = spec.get('config') or {}
  from beam_llm import batch_api
  batch_api.check_backend(owner, spec['type'], cls, config)
  _config.check_call_options(
      owner, cls.__init__, config, prefix='model_handler.config.',
      exclude=('generation', 'batching'))
  with _config.reported_as(owner):
    handler = cls(**config, generation=dict(generation), batching=dict(batching))
  handler.owner = _config.user_owner(owner)
  return handler
