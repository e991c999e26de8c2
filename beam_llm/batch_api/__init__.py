"""Provider Batch APIs (`batch_api: true`): the same rows for half the price.

The options are declared here once (`BatchOptions`); a backend that supports
a Batch API gets them with `@with_options(ItsBatchClient)` and takes them out
of its keyword options with `BatchOptions.take`. GenerateText then runs it
with `BatchGenerate` (beam_llm/batch_api/transform.py) instead of one request
per row. The backend gives `batch_line(request)` (a built request as the
provider's file line wants it); everything else provider-specific is its
client's (`client.BatchClient`: line format, files, batches, statuses).
Modules:

- `lines`: packing lines into files, verdicts per `custom_id` (no I/O);
- `client`: the provider interface, every call through the remote-call
  policy (beam_llm.remote); `openai_batches` (OpenAI's Batch API),
  `gemini_batches` (the Gemini Developer API's Batch Mode) and
  `vertex_batches` (Vertex AI batch prediction jobs on Cloud Storage
  files) implement it;
- `store`: which batches hold which rows, persisted in `cache_dir` before
  any wait, so a rerun resumes them;
- `transform`: the Beam side (files filled by GroupIntoBatches, a splittable
  DoFn that polls and checkpoints instead of holding a bundle).
"""
import dataclasses
import inspect
import textwrap
from typing import Any, Mapping

from beam_llm import _config

_OWNER = 'GenerateText'


def _option(default, doc: str):
  return dataclasses.field(default=default, metadata={'doc': doc})


@dataclasses.dataclass(frozen=True)
class BatchOptions:
  """The Batch API options of a remote backend, declared once."""
  batch_api: bool = _option(
      False, "Send rows through the provider's Batch API (files of requests, "
      'results within 24 h, about half the price) instead of one request per '
      'row; the same rows and error rows come out (docs/remote.md, "Batch '
      'mode"). Defaults to false.')
  # These two default to the provider's (its client's `limits`).
  batch_max_requests: int = _option(None, 'Most requests per batch file.')
  batch_max_bytes: int = _option(None, 'Most bytes per batch file.')
  batch_poll_secs: float = _option(
      30.0, 'Wait before the first look at a submitted batch; it doubles '
      'with each look, up to 10 times this.')
  batch_rounds: int = _option(
      3, 'Batches a row may go in: its first and follow-ups for lines that '
      'failed (5xx) or were left undone (a batch expired or cancelled). '
      'A row still unanswered after them is sent as a synchronous request.')
  batch_deadline_secs: float = _option(
      172_800.0, 'No follow-up batch for a row this long after its first '
      'was submitted; its line is sent as a synchronous request instead.')
  batch_keep_files: bool = _option(
      False, "Keep the provider's batch files (they hold prompts and "
      'answers). By default the request file is deleted once its batch has '
      'ended, and the result files once every line read from them is kept '
      'in cache_dir (answers in the response cache, refused lines beside '
      'the batch records), so a rerun never needs them; without cache_dir '
      '(or with the cache off) result files are kept. A delete that fails '
      'is a warning naming the file. Defaults to false.')

  @classmethod
  def take(cls, options: dict, provider) -> 'BatchOptions':
    """Pops the batch options out of a backend's keyword options; the file
    limits not given are the provider's (`provider.limits`)."""
    names = [f.name for f in dataclasses.fields(cls)]
    given = {n: options.pop(n) for n in names if n in options}
    found = cls(**{**{n: v for n, (v, _) in provider.limits.items()},
                   **{n: v for n, v in given.items() if v is not None}})
    for key, value in (('batch_max_requests', found.batch_max_requests),
                       ('batch_max_bytes', found.batch_max_bytes),
                       ('batch_rounds', found.batch_rounds),
                       ('batch_poll_secs', found.batch_poll_secs),
                       ('batch_deadline_secs', found.batch_deadline_secs)):
      if value <= 0:
        _config.fail(_OWNER, f'model_handler.config.{key}',
                     f'must be more than 0, got {value}')
    return found


def with_options(provider):
  """Class decorator for a backend whose Batch API `provider` (a
  client.BatchClient subclass) implements: the BatchOptions in its
  `__init__` signature (which takes them in `**policy`), with the
  provider's file limits as defaults, and in its docstring's `Args:`."""
  def decorate(cls):
    cls.batch_provider = provider
    return _add_options(cls, provider)
  return decorate


def _add_options(cls, provider):
  init = cls.__init__
  sig = inspect.signature(init)
  params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
  tail = [p for p in params if p.name in ('generation', 'batching')]
  params = [p for p in params if p not in tail]
  hints = dict(getattr(init, '__annotations__', {}))
  lines = []
  for f in dataclasses.fields(BatchOptions):
    default, why = provider.limits.get(f.name, (f.default, ''))
    params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                    default=default, annotation=f.type))
    hints[f.name] = f.type
    text = f.metadata['doc']
    if 'Defaults to' not in text:
      value = int(default) if default == int(default) else default
      text += f' Defaults to {value:,}' + (f' ({why}).' if why else '.')
    lines.append(textwrap.fill(text, 78, initial_indent=f'    {f.name}: ',
                               subsequent_indent='      '))
  var = [p for p in sig.parameters.values() if p.kind == p.VAR_KEYWORD]
  init.__signature__ = sig.replace(parameters=params + tail + var)
  init.__annotations__ = hints
  cls.__doc__ = cls.__doc__.rstrip() + '\n' + '\n'.join(lines) + '\n'
  return cls


def check_backend(owner: str, backend: str, cls, config: Mapping[str, Any]
                  ) -> None:
  """At build time: `batch_api` on a backend without a Batch API fails,
  naming the option."""
  if 'batch_api' not in config:
    return
  if 'batch_api' not in inspect.signature(cls.__init__).parameters:
    _config.fail(
        owner, 'model_handler.config.batch_api',
        f'is not supported by the {backend} backend: batch_api is supported '
        'by the OpenAICompatible and Gemini backends')
