"""beam-llm: LLM transforms for Apache Beam YAML.

Register them in a pipeline with the inline python provider::

    providers:
      - type: python
        config: {}
        transforms:
          RenderPrompt: beam_llm.RenderPrompt
          GenerateText: beam_llm.GenerateText
          ParseJSON: beam_llm.ParseJSON
          FormatErrors: beam_llm.FormatErrors
          ChunkText: beam_llm.ChunkText
          EmbedText: beam_llm.EmbedText
          WriteToVectorStore: beam_llm.WriteToVectorStore
          SearchVectorStore: beam_llm.SearchVectorStore

Transforms are imported on first use, so `import beam_llm` stays cheap.
Other packages can add transforms and backends (beam_llm.extensions).
"""
import importlib

__version__ = '0.2.0'

TRANSFORMS = {
    'RenderPrompt': 'beam_llm.transforms.render_prompt',
    'GenerateText': 'beam_llm.transforms.generate_text',
    'ParseJSON': 'beam_llm.transforms.parse_json',
    'FormatErrors': 'beam_llm.transforms.format_errors',
    'ReadJsonLines': 'beam_llm.transforms.read_json_lines',
    'ChunkText': 'beam_llm.transforms.chunk_text',
    'EmbedText': 'beam_llm.transforms.embed_text',
    'WriteToVectorStore': 'beam_llm.transforms.write_to_vector_store',
    'SearchVectorStore': 'beam_llm.transforms.search_vector_store',
    'Classify': 'beam_llm.transforms.semantic.classify',
    'Extract': 'beam_llm.transforms.semantic.extract',
    'SemanticFilter': 'beam_llm.transforms.semantic.semantic_filter',
    'SemanticMap': 'beam_llm.transforms.semantic.semantic_map',
    'SemanticJoin': 'beam_llm.transforms.semantic.semantic_join',
    'SemanticTopK': 'beam_llm.transforms.semantic.semantic_topk',
    'Resolve': 'beam_llm.transforms.semantic.resolve',
    'SemanticReduce': 'beam_llm.transforms.semantic.summarize',
    'SummarizePerKey': 'beam_llm.transforms.semantic.summarize',
}

__all__ = sorted(TRANSFORMS)


def __getattr__(name):
  if name in TRANSFORMS:
    # Beam YAML is loading the shipped listing: let its next provider find
    # the extension transforms (see beam_llm.extensions).
    importlib.import_module('beam_llm.extensions').register_provider_type()
    return getattr(importlib.import_module(TRANSFORMS[name]), name)
  if not name.startswith('_') and name != 'extensions':
    # Transforms other packages add (entry points; see beam_llm.extensions).
    extensions = importlib.import_module('beam_llm.extensions')
    if name in extensions.transforms():
      return extensions.load_transform(name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + __all__)
