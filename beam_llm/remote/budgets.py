"""What a worker process may send besides its concurrency limit (limits.py),
used by `caller.RemoteCaller` only and touched from the process's one remote
event loop (no locks):

- `Budget`: `requests_per_minute` / `tokens_per_minute`, the limits
  providers publish, as token buckets (tokens are counted from the usage
  the service reports, after the fact: a request that overdraws the budget
  makes the next ones wait).
- `Throttler`: client-side adaptive throttling from Google's SRE book.
- `Gate`: no request before the time a Retry-After named.
"""
import collections
import random
import time
from typing import Optional


class Budget:
  """A token bucket of `per_minute` units, shared by a process's requests.

  `take(n)` spends n units (it may overdraw: usage is known only after an
  answer); `wait_secs()` is how long until the balance is positive again.
  """
  def __init__(self, per_minute: float):
    self._rate = per_minute / 60.0
    self._capacity = max(1.0, per_minute / 60.0)  # About a second's worth.
    self._balance = self._capacity
    self._stamp = time.monotonic()

  def _refill(self, now: float) -> None:
    self._balance = min(
        self._capacity, self._balance + (now - self._stamp) * self._rate)
    self._stamp = now

  def take(self, units: float) -> None:
    self._refill(time.monotonic())
    self._balance -= units

  def wait_secs(self, units: float = 0.0) -> float:
    """Seconds until `units` can be taken (0: now)."""
    self._refill(time.monotonic())
    short = units - self._balance if units else -self._balance + 1e-9
    return max(0.0, short / self._rate) if short > 0 else 0.0


class Throttler:
  """Client-side adaptive throttling, after Google's SRE book (Handling
  Overload) and Beam's AdaptiveThrottler, over a sliding window:

      P(delay a request) = max(0, (requests - K * accepts) / (requests + 1))

  A request is counted when its answer is known, not when it is sent: with
  many requests in flight, counting at send time makes a healthy service
  look like one that accepts nothing. Requests delayed locally count as
  requests (not accepts), once each, as the SRE formula has it.
  """
  def __init__(self, window_secs: float, overload_ratio: float,
               rng: random.Random):
    self._window = window_secs
    self._bucket = max(window_secs / 60, 0.01)
    self._k = overload_ratio
    self._buckets = collections.deque()  # [bucket start, requests, accepts]
    self._requests = self._accepts = 0  # Sums over the buckets.
    self._random = rng

  def _add(self, requests: int, accepts: int) -> None:
    now = time.monotonic()
    start = now - now % self._bucket
    if not self._buckets or self._buckets[-1][0] != start:
      self._buckets.append([start, 0, 0])
    self._buckets[-1][1] += requests
    self._buckets[-1][2] += accepts
    self._requests += requests
    self._accepts += accepts

  def _totals(self):
    horizon = time.monotonic() - self._window
    while self._buckets and self._buckets[0][0] < horizon:
      _, requests, accepts = self._buckets.popleft()
      self._requests -= requests
      self._accepts -= accepts
    return self._requests, self._accepts

  def should_delay(self, count: bool = True) -> bool:
    requests, accepts = self._totals()
    p = max(0.0, (requests - self._k * accepts) / (requests + 1))
    delay = self._random.random() < p
    if delay and count:
      self._add(1, 0)
    return delay

  def record(self, accepted: bool) -> None:
    self._add(1, int(accepted))


class Gate:
  """The time before which no request may start, in this process: set from
  a service's Retry-After, which meant this client, not one request."""
  def __init__(self):
    self._until = 0.0

  def block_for(self, secs: float) -> None:
    self._until = max(self._until, time.monotonic() + secs)

  @property
  def until(self) -> float:
    return self._until


def optional_budget(per_minute: Optional[float]) -> Optional[Budget]:
  return Budget(per_minute) if per_minute else None
