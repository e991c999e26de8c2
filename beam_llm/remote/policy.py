"""The remote-call options, declared once for every remote backend.

`RemotePolicy` holds them; `@with_policy` puts them into a backend's
signature (so build-time checks, docgen and Beam YAML know them) and its
`Args:` documentation, with the same defaults for generation, embeddings
and the Batch API. A backend builds its policy with
`RemotePolicy.from_options(owner, options)`.
"""
import dataclasses
import inspect
from typing import Any, List, Mapping, Optional

from beam_llm import _config


def _option(default, doc: str):
  return dataclasses.field(default=default, metadata={'doc': doc})


@dataclasses.dataclass(frozen=True)
class RemotePolicy:
  """The options every remote backend takes, declared here once.

  Backends get them in their signature and documentation with
  `with_policy` (below) and build the policy with `RemotePolicy.from_options`.
  """
  max_concurrency: int = _option(
      256, 'Most requests in flight at once per worker process. The number '
      'actually in flight adapts at run time: it starts at 32 (or the cap), grows while the '
      'service keeps up and shrinks when it turns requests away (429, 503, '
      'timeouts) or its latency grows (requests queueing); this is its cap.')
  max_retries: int = _option(
      5, 'Most retries per row after its first attempt. Transient faults are '
      'retried: 429, 408, 5xx, dropped connections, timeouts, and answers cut '
      'off or malformed; a request the service refuses as invalid is not.')
  timeout_secs: float = _option(
      60.0, 'Longest wait for one answer before the attempt counts as a '
      'timeout.')
  deadline_secs: float = _option(
      600.0, 'Most time one row may take, from its first attempt, including '
      'retries, backoff and waits for Retry-After and budgets.')
  initial_backoff_secs: float = _option(
      1.0, 'Backoff before the first retry; it doubles with each retry (with '
      "jitter), and is at least the service's Retry-After.")
  max_backoff_secs: float = _option(
      60.0, 'Longest backoff between two attempts (a longer Retry-After is '
      'still honoured).')
  requests_per_minute: Optional[float] = _option(
      None, 'Most requests (attempts) per minute per worker process, as '
      "providers publish their limits. Defaults to none (no limit).")
  tokens_per_minute: Optional[float] = _option(
      None, 'Most tokens (prompt + generated, as the service reports them) '
      'per minute per worker process. Defaults to none (no limit).')
  cache: Optional[bool] = _option(
      None, 'Send identical requests (same backend, target, model, prompt and '
      'parameters) once per worker and reuse the answer. Defaults to on, '
      'except when sampling without a `seed` in generation_config (identical '
      'prompts should then get independent samples).')
  cache_dir: Optional[str] = _option(
      None, 'Directory (local, gs://, s3://, ...) that keeps answers across '
      'runs: a re-run after a crash does not pay again for requests that '
      'already succeeded. A file that cannot be read is a miss. Defaults to '
      'none (memory only).')

  @classmethod
  def from_options(cls, owner: str, options: Mapping[str, Any]) -> 'RemotePolicy':
    """The policy from a backend's keyword options; fails on bad values."""
    policy = cls(**options)
    for key, problem in policy.problems():
      _config.fail(owner, f'model_handler.config.{key}', problem)
    return policy

  def problems(self) -> List[tuple]:
    """(option, problem) pairs for values that make no sense."""
    out = []
    if self.max_concurrency < 1:
      out.append(('max_concurrency', 'must be at least 1'))
    if self.max_retries < 0:
      out.append(('max_retries', 'must be 0 or more'))
    for name in ('timeout_secs', 'deadline_secs', 'initial_backoff_secs',
                 'max_backoff_secs', 'requests_per_minute', 'tokens_per_minute'):
      value = getattr(self, name)
      if value is not None and value <= 0:
        out.append((name, 'must be more than 0'))
    return out


def policy_doc(skip=()) -> str:
  """The `Args:` lines of the policy options, for a backend's docstring
  (less those in `skip`: the backend declares and documents them itself)."""
  lines = []
  for f in dataclasses.fields(RemotePolicy):
    if f.name in skip:
      continue
    text = f.metadata['doc']
    if f.default is not None and 'Defaults to' not in text:
      default = str(f.default).lower() if isinstance(f.default, bool) else f.default
      text += f' Defaults to {default:g}.' if isinstance(
          default, (int, float)) else f' Defaults to {default}.'
    words, line = text.split(), f'    {f.name}:'
    for word in words:
      if len(line) + 1 + len(word) > 78:
        lines.append(line)
        line = '      ' + word
      else:
        line += ' ' + word
    lines.append(line)
  return '\n'.join(lines)


def with_policy(cls):
  """Class decorator for a remote backend whose `__init__` takes `**policy`.

  Puts the RemotePolicy options into its signature (so config checks and
  the generated reference know them) and its docstring's `Args:`. An option
  the backend declares itself (with a default of its own, passed on to its
  base) keeps its declaration and its own text.
  """
  init = cls.__init__
  sig = inspect.signature(init)
  params = [p for p in sig.parameters.values() if p.kind != p.VAR_KEYWORD]
  own = {p.name for p in params}
  hints = dict(getattr(init, '__annotations__', {}))
  tail = [p for p in params if p.name in ('generation', 'batching')]
  params = [p for p in params if p not in tail]
  for f in dataclasses.fields(RemotePolicy):
    if f.name in own:
      continue
    params.append(inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
        annotation=f.type))
    hints[f.name] = f.type
  init.__signature__ = sig.replace(parameters=params + tail)
  init.__annotations__ = hints
  cls.__doc__ = cls.__doc__.rstrip() + '\n' + policy_doc(own) + '\n'
  return cls
