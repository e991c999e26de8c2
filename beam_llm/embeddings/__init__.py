"""EmbedText backends, by the name used in `model_handler: {type: ...}`.

On the worker: `SentenceTransformers`. Remote: `OpenAICompatible`
(/v1/embeddings) and `VertexAI` (text embedding models). Each lives in its
own module, imported only when a pipeline uses it.
"""
import importlib
from typing import Any, Mapping

from beam_llm import _config

BACKENDS = {
    'SentenceTransformers':
        'beam_llm.embeddings.sentence_transformers:SentenceTransformersEmbedder',
    'OpenAICompatible': 'beam_llm.embeddings.openai_compatible:OpenAIEmbedder',
    'VertexAI': 'beam_llm.embeddings.vertex_ai:VertexAIEmbedder',
}
# type name -> (the setup.cfg extra that installs it, modules it imports on
# the worker): checked at build time, as GenerateText's backends are
# (beam_llm/handlers/__init__.py), so a missing library is one message
# naming the extra, not a ModuleNotFoundError mid-run.
BACKEND_EXTRAS = {
    'SentenceTransformers': ('rag', ('torch', 'sentence_transformers')),
    'OpenAICompatible': ('openai', ('openai', 'httpx')),
    'VertexAI': ('vertex', ('google.cloud.aiplatform',)),
}


def backend_class(owner: str, name: Any):
  if name not in BACKENDS:
    _config.fail(
        owner, 'model_handler.type',
        f'names an unknown embedding backend {name!r}; choose one of '
        f'{", ".join(sorted(BACKENDS))}')
  extra, modules = BACKEND_EXTRAS[name]
  _config.require_extra(owner, f'the {name} embedding backend', extra, modules)
  module, cls = BACKENDS[name].split(':')
  return getattr(importlib.import_module(module), cls)


def create_handler(owner: str, spec: Mapping[str, Any], batching: Mapping[str, Any]):
  """Builds the backend named by a YAML `model_handler: {type, config}`."""
  _config.check_model_handler_spec(owner, spec, 'SentenceTransformers')
  cls = backend_class(owner, spec['type'])
  config = spec.get('config') or {}
  _config.check_call_options(
      owner, cls.__init__, config, prefix='model_handler.config.',
      exclude=('batching',))
  with _config.reported_as(owner):
    handler = cls(**config, batching=dict(batching))
  handler.owner = _config.user_owner(owner)
  return handler
