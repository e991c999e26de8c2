"""Store calls under the remote-call policy: failures classified once.

- A transient fault (the store is down or restarting, a dropped connection,
  a timeout) is retried through `beam_llm.remote`'s policy (backoff with
  jitter, `max_retries`, `deadline_secs`), reconnecting before each retry.
  Once the budget is spent, `StoreUnavailable` fails the bundle: Beam
  retries bundles, and a run that could not reach its store must not exit
  0 with the rows turned into error rows.
- A problem with the rows themselves (`BadRecord`) is raised as it is: the
  transforms find the row and make it an error row.
- Anything else is a bug (ours, or an unexpected answer) and is raised.
"""
import logging
from typing import Callable, Optional, TypeVar

from beam_llm import remote
from beam_llm.stores.base import BadRecord
from beam_llm.stores.base import StoreUnavailable
from beam_llm.stores.base import VectorStore

_LOG = logging.getLogger('beam_llm.stores')
T = TypeVar('T')


class StoreCaller:
  """Runs one store's calls for one worker process (a DoFn's lifetime)."""
  def __init__(self, store: VectorStore,
               policy: Optional[remote.RemotePolicy] = None):
    self.store = store
    self._caller = remote.RemoteCaller(policy or remote.RemotePolicy())
    self._broken = False  # The connection failed: reopen before the next call.

  def call(self, what: str, fn: Callable[[], T]) -> T:
    """`fn()` against the store, retried through outages (see above)."""
    row_problem = []

    def send_blocking():
      if self._broken:
        self.store.close()
        self.store.connect()  # StoreUnavailable while still down: retried.
        self._broken = False
        _LOG.warning('%s: reconnected', self.store.describe())
      try:
        return fn()
      except Exception as exn:
        if self.store.is_transient(exn):
          self._broken = True
        raise

    def classify(exn):
      if isinstance(exn, BadRecord):
        row_problem.append(exn)
        return remote.Failure(remote.CLIENT_ERROR, str(exn))
      if isinstance(exn, StoreUnavailable) or self.store.is_transient(exn):
        cause = exn.__cause__ if isinstance(exn, StoreUnavailable) else exn
        why = f'{type(cause or exn).__name__}: {_first_line(cause or exn)}'
        _LOG.warning('%s: %s failed (%s); retrying', self.store.describe(),
                     what, why)
        return remote.Failure(remote.CONNECTION_ERROR, why, retryable=True)
      return None  # A bug: `call` raises it.

    async def send(timeout):
      del timeout  # Each store client applies its own.
      return await remote.in_thread(send_blocking)

    # On the process's remote loop, with the policy every remote call has;
    # the store's blocking client runs on a thread from there.
    outcome = remote.run_blocking(self._caller.call(send, classify))
    if outcome.failure is None:
      return outcome.value
    if row_problem:
      raise row_problem[-1]
    raise StoreUnavailable(
        f'{self.store.describe()}: {what} failed {outcome.attempts} times '
        f'over {outcome.waited_secs:.0f}s of retries; last: '
        f'{outcome.failure.msg}')


def _first_line(exn: BaseException) -> str:
  text = str(exn).strip().splitlines()
  return (text[0] if text else '')[:300]
