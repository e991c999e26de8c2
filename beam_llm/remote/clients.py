"""What connecting to a remote service takes, written once: the API key
from the environment (never from YAML), and the `openai` client that
generation and embeddings share."""
import atexit
import os
from typing import Any, Callable, Optional, TypeVar

from beam_llm.remote.caller import run_blocking
from beam_llm.remote.caller import run_on_loop
from beam_llm.remote.failures import RemoteUnavailable

T = TypeVar('T')


def api_key(env: Optional[str], where: str, redactor, otherwise: str) -> Optional[str]:
  """The key in environment variable `env` (None when `env` is None),
  registered with `redactor` so that it never reaches a message.

  `where` names the transform and backend for the error; `otherwise` says
  what to do instead of setting it."""
  if not env:
    return None
  key = os.environ.get(env, '')
  if not key:
    raise RemoteUnavailable(
        f'{where}: the environment variable {env!r} (api_key_env) is not set '
        f'where the model loads; set it on the workers, or {otherwise}')
  redactor.add(key)
  return key


def openai_client(base_url: str, key: Optional[str], timeout_secs: float,
                  max_concurrency: int):
  """An `openai.AsyncOpenAI` made on the process's remote loop (its
  connections belong to that loop), with its own retries off: the remote
  policy owns them. On aiohttp (openai's `aiohttp` extra) where installed:
  about a third of the CPU per request of the httpx default
  (bench/RESULTS.md)."""
  import httpx
  import openai
  limits = httpx.Limits(max_connections=max(max_concurrency, 100),
                        max_keepalive_connections=max_concurrency)

  async def make():
    try:
      import aiohttp  # pylint: disable=unused-import
      http = openai.DefaultAioHttpClient(limits=limits)
    except ImportError:
      http = openai.DefaultAsyncHttpxClient(limits=limits)
    # The client insists on a key; local servers ignore it.
    return openai.AsyncOpenAI(base_url=base_url, api_key=key or 'EMPTY',
                              max_retries=0, timeout=timeout_secs,
                              http_client=http)

  client = run_blocking(make())
  atexit.register(_close_at_exit, client)
  return client


def async_httpx_client(limits):
  """An `httpx.AsyncClient` made on the process's remote loop (its
  connections belong to that loop), closed at exit."""
  import httpx

  async def make():
    return httpx.AsyncClient(limits=limits)

  client = run_blocking(make())
  atexit.register(_close_at_exit, client)
  return client


def _close_at_exit(client) -> None:
  """Closes an async client's connections before the interpreter goes
  (aiohttp logs an error for each session left open)."""
  try:
    close = getattr(client, 'aclose', None) or client.close
    run_on_loop(close()).result(timeout=2)
  except Exception:  # pylint: disable=broad-except
    pass  # Exiting anyway.


def connect(where: str, make_client: Callable[[Any], T], redactor) -> T:
  """`make_client(redactor)`, its failures told as `RemoteUnavailable`
  (which fails the bundle) naming `where`, with any secret redacted; a
  missing client library stays an ImportError."""
  try:
    return make_client(redactor)
  except RemoteUnavailable as exn:
    raise RemoteUnavailable(redactor.redact(str(exn))) from None
  except ImportError:
    raise
  except Exception as exn:  # pylint: disable=broad-except
    raise RemoteUnavailable(redactor.redact(
        f'{where}: cannot set up the client: {type(exn).__name__}: {exn}')
                            ) from None
