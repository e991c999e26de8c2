"""One row's failure vs everyone's: the rule GenerateText and EmbedText share.

A model call over a batch that raises is retried row by row, so one bad row
cannot fail its batch-mates. What comes out of that decides:
- an exception of a type that means a bug or a config error (TypeError,
  AttributeError, ...) is raised at once, never an error row;
- rows that fail on their own become error rows; the others keep their
  answers;
- when every row of a batch of several fails alike (same exception type),
  it is not the rows' fault (a bug, a model that cannot run, a service
  that is down): it is raised, and the bundle fails;
- a `ServiceOutage` (a service or store still failing once the remote-call
  policy's retries are spent) is raised at once: retrying row by row would
  only wait out the same outage once per row.
"""
import logging
from typing import Any, Callable, List, TypeVar

# Exceptions that mean a bug or a config error, never one row's problem.
# (Not IndexError: torch raises it for a prompt past a model's positions.)
BUG_TYPES = (TypeError, AttributeError, NameError, ImportError, AssertionError,
             NotImplementedError, SyntaxError)

T = TypeVar('T')


class ServiceOutage(RuntimeError):
  """A service or store kept failing (down, 5xx, timeouts, connection
  refused) until the retries ran out: fails the bundle, never an error row.
  Beam retries the bundle; a run that could not reach its service must not
  exit 0 with its rows in the errors file."""


def call_isolating_failures(
    call: Callable[[list], List[T]],
    items: list,
    failure: Callable[[Exception], T],
    log: logging.Logger,
    what: str) -> List[T]:
  """`call(items)`, one result per item, under the rule above; `failure`
  turns a row's own exception into its result (an error row later)."""
  if not items:
    return []
  try:
    results = call(items)
  except (ServiceOutage,) + BUG_TYPES:
    raise
  except Exception as exn:  # pylint: disable=broad-except
    if len(items) == 1:
      return [failure(exn)]
    log.warning('%s: a batch of %d failed (%s); retrying row by row', what,
                len(items), exn)
    alone: List[Any] = []
    for item in items:
      try:
        alone.append(call([item])[0])
      except (ServiceOutage,) + BUG_TYPES:
        raise
      except Exception as row_exn:  # pylint: disable=broad-except
        alone.append(row_exn)
    kinds = {type(r) for r in alone}
    if len(kinds) == 1 and issubclass(kinds.pop(), Exception):
      raise alone[0]  # Every row alike: not a row's problem.
    return [failure(r) if isinstance(r, Exception) else r for r in alone]
  if len(results) != len(items):
    raise RuntimeError(
        f'{what} returned {len(results)} results for {len(items)} rows')
  return results
