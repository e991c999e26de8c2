"""sentence-transformers on the worker: one model per worker process (or per
machine with `large_model`), batched by RunInference.

torch and sentence_transformers are imported only on the worker.
"""
import time
from typing import Literal, Optional

from beam_llm.embeddings.base import EmbeddingFailure
from beam_llm.embeddings.base import EmbeddingHandler
from beam_llm.embeddings.base import log_load

_OWNER = 'EmbedText'


class SentenceTransformersEmbedder(EmbeddingHandler):
  """`model_handler: {type: SentenceTransformers, config: {...}}`.

  Args:
    model: A hub model id (e.g. sentence-transformers/all-MiniLM-L6-v2) or a
      local directory holding a sentence-transformers model (also gs://...,
      copied once per worker machine).
    device: `cpu`, `cuda` or `auto` (cuda when available). Defaults to auto.
    normalize: Scale vectors to length 1 (cosine similarity becomes a dot
      product). Defaults to true.
    truncate: Cut texts longer than the model's input limit instead of
      sending them to the error output as `text_too_long`. Defaults to
      false: a cut text would be stored or searched under a meaning it only
      partly has.
    max_input_tokens: The input limit in tokens. Defaults to the model's own
      (its max_seq_length, 256 for all-MiniLM-L6-v2).
    batch_size: Texts per forward pass within a batch. Defaults to 32.
  """
  backend = 'SentenceTransformers'

  def __init__(
      self,
      model: str,
      device: Literal['cpu', 'cuda', 'auto'] = 'auto',
      normalize: bool = True,
      truncate: bool = False,
      max_input_tokens: Optional[int] = None,
      batch_size: int = 32,
      batching=None):
    super().__init__(batching or {})
    self._model_id = model
    self._device = device
    self._normalize = normalize
    self._truncate = truncate
    self._max_input_tokens = max_input_tokens
    self._batch_size = batch_size

  def describe(self) -> str:
    return f'SentenceTransformers {self._model_id}'

  def check_at_build(self) -> None:
    from beam_llm.handlers.huggingface import why_unavailable
    why = why_unavailable(self._model_id, None)
    if why:
      raise RuntimeError(
          f"{self.owner}: embedding model {self._model_id!r} is not available: "
          f"{why}.\nTo run without the hub, point the pipeline at a local "
          "model directory, e.g. --jinja_variables='{\"embedding_model\": "
          "\"/path/to/DIR\"}'")

  def load_model(self):
    import torch
    from sentence_transformers import SentenceTransformer

    from beam_llm import staging
    start = time.monotonic()
    device = self._device
    if device == 'auto':
      device = 'cuda' if torch.cuda.is_available() else 'cpu'
    model = SentenceTransformer(staging.local_copy(self._model_id), device=device)
    log_load(self.describe(), start)
    return model

  def embed(self, model, texts: list) -> list:
    limit = self._max_input_tokens or model.max_seq_length
    results: list = [None] * len(texts)
    todo = []
    if self._truncate:
      todo = list(range(len(texts)))
    else:
      # Count with the model's tokenizer, special tokens included, exactly
      # as encode() would see the text.
      counts = [len(ids) for ids in model.tokenizer(texts)['input_ids']]
      for i, n in enumerate(counts):
        if n > limit:
          results[i] = EmbeddingFailure(
              f'the text has {n} tokens, more than the {limit} this embedding '
              'model takes (chunk it smaller, or set truncate: true)',
              'text_too_long')
        else:
          todo.append(i)
    if todo:
      vectors = model.encode(
          [texts[i] for i in todo],
          batch_size=self._batch_size,
          normalize_embeddings=self._normalize,
          convert_to_numpy=True,
          show_progress_bar=False)
      for i, v in zip(todo, vectors):
        results[i] = [float(x) for x in v]
    return results
