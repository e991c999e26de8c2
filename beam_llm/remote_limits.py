"""How much a worker process may send: adaptive concurrency and budgets.

Used by beam_llm.remote.RemoteCaller only (one instance of each per caller,
so per worker process and backend, shared by all of its threads):

- `AdaptiveLimit`: how many requests may be in flight, found at run time.
  It starts at 32, doubles per round trip while the service keeps up
  (slow start), then grows by about sqrt(limit) per round trip (a quarter
  per round trip near the limit at which the service last refused); it
  cuts the limit when the service turns requests away (429, 503, timeouts)
  or when its smoothed latency grows past twice its recent best (requests
  are queueing there).
  Never above `max_concurrency`. A user does not need to know the slot
  count of their server, and a rate-limited API is not hammered.
- `Budget`: `requests_per_minute` / `tokens_per_minute`, the limits
  providers publish, as token buckets (tokens are counted from the usage
  the service reports, after the fact: a request that overdraws the budget
  makes the next ones wait).
- `Throttler`: client-side adaptive throttling from Google's SRE book.
"""
import collections
import math
import random
import threading
import time
from typing import Optional

# Requests in flight before anything is known about the service.
INITIAL_LIMIT = 32
# A smoothed latency this many times its recent best means queueing.
_LATENCY_TOLERANCE = 2.0
# The latency is averaged over about one round trip (with `limit` answers per
# round trip, each answer weighs 1/limit), so that one short or long answer
# is no signal; its best is kept over two windows of this many seconds.
_BEST_WINDOW_SECS = 30.0
_OVERLOAD_CUT = 0.8  # Limit multiplier on a 429 / 503 / timeout.
_LATENCY_CUT = 0.9  # ... and on latency growth.


class AdaptiveLimit:
  """A concurrency limit that adapts to the service (see module doc)."""
  def __init__(self, cap: int, initial: int = INITIAL_LIMIT):
    self.cap = cap
    self.limit = float(min(initial, cap))
    self.in_flight = 0
    self.max_in_flight = 0
    self._cond = threading.Condition()
    # Coroutines waiting for a slot: (loop, future), woken like threads.
    self._async_waiters = collections.deque()
    self._slow_start = True
    self._short = None  # Smoothed latency (seconds).
    self._best = [math.inf, math.inf]  # Its minimum: last window, this one.
    self._window_start = time.monotonic()
    self._last_cut = 0.0
    # The limit at which the service last turned requests away: near it,
    # grow slowly (probe), so as not to send a 429 every few round trips.
    self._ceiling = None

  def acquire(self) -> None:
    with self._cond:
      while self.in_flight >= int(self.limit):
        self._cond.wait()
      self._take()

  async def acquire_async(self) -> None:
    """`acquire` for a coroutine: waits without blocking its event loop."""
    import asyncio
    loop = asyncio.get_running_loop()
    while True:
      with self._cond:
        if self.in_flight < int(self.limit):
          self._take()
          return
        waiter = loop.create_future()
        self._async_waiters.append((loop, waiter))
      try:
        await waiter
      except asyncio.CancelledError:
        with self._cond:  # Pass on a wake-up it may have been given.
          self._wake(1)
        raise

  def _take(self) -> None:
    self.in_flight += 1
    self.max_in_flight = max(self.max_in_flight, self.in_flight)

  def _wake(self, n: int) -> None:
    """Wakes up to n waiters (threads and coroutines); holds self._cond."""
    self._cond.notify(n)
    while n > 0 and self._async_waiters:
      loop, waiter = self._async_waiters.popleft()
      loop.call_soon_threadsafe(_set_done, waiter)
      n -= 1

  def cancel(self) -> None:
    """Gives a slot back unused (no latency learned)."""
    with self._cond:
      self.in_flight -= 1
      self._wake(1)

  def release(self, latency: float, overloaded: bool) -> None:
    with self._cond:
      saturated = self.in_flight >= int(self.limit) - 1
      self.in_flight -= 1
      before = int(self.limit)
      now = time.monotonic()
      if overloaded:
        if self._cut(_OVERLOAD_CUT, now):
          self._ceiling = before
      else:
        self._learn(latency, now, saturated)
      self.limit = min(float(self.cap), max(1.0, self.limit))
      free = int(self.limit) - self.in_flight
      if free > 0:
        self._wake(free if int(self.limit) > before else 1)

  def _learn(self, latency: float, now: float, saturated: bool) -> None:
    if self._short is None:
      self._short = latency
    self._short += (latency - self._short) / max(1.0, self.limit)
    if now - self._window_start > _BEST_WINDOW_SECS:
      self._best = [self._best[1], math.inf]
      self._window_start = now
    self._best[1] = min(self._best[1], self._short)
    if self._short > _LATENCY_TOLERANCE * min(self._best):
      self._cut(_LATENCY_CUT, now)
      return
    if not saturated:  # Only grow a limit that is in use (as TCP does).
      return
    if self._slow_start:
      self.limit += 1.0  # One more per answer: doubles per round trip.
    elif self._ceiling and self.limit >= 0.9 * self._ceiling:
      self.limit += 0.25 / self.limit  # A quarter more per round trip.
      if self.limit > 1.1 * self._ceiling:
        self._ceiling = None  # The service got bigger: grow freely again.
    else:
      self.limit += math.sqrt(self.limit) / self.limit

  def _cut(self, factor: float, now: float) -> bool:
    # Once per round trip: the answers of one overloaded round are one signal.
    if now - self._last_cut < (self._short or 0.0):
      return False
    self._last_cut = now
    self._slow_start = False
    self.limit *= factor
    return True


def _set_done(waiter) -> None:
  if not waiter.done():
    waiter.set_result(None)


class Budget:
  """A token bucket of `per_minute` units, shared by a process's threads.

  `take(n)` spends n units (it may overdraw: usage is known only after an
  answer); `wait_secs()` is how long until the balance is positive again.
  """
  def __init__(self, per_minute: float):
    self._rate = per_minute / 60.0
    self._capacity = max(1.0, per_minute / 60.0)  # About a second's worth.
    self._balance = self._capacity
    self._stamp = time.monotonic()
    self._lock = threading.Lock()

  def _refill(self, now: float) -> None:
    self._balance = min(
        self._capacity, self._balance + (now - self._stamp) * self._rate)
    self._stamp = now

  def take(self, units: float) -> None:
    with self._lock:
      self._refill(time.monotonic())
      self._balance -= units

  def wait_secs(self, units: float = 0.0) -> float:
    """Seconds until `units` can be taken (0: now)."""
    with self._lock:
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
    self._lock = threading.Lock()
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
    with self._lock:
      requests, accepts = self._totals()
      p = max(0.0, (requests - self._k * accepts) / (requests + 1))
      delay = self._random.random() < p
      if delay and count:
        self._add(1, 0)
      return delay

  def record(self, accepted: bool) -> None:
    with self._lock:
      self._add(1, int(accepted))


class Gate:
  """The time before which no request may start, in this process: set from
  a service's Retry-After, which meant this client, not one request."""
  def __init__(self):
    self._lock = threading.Lock()
    self._until = 0.0

  def block_for(self, secs: float) -> None:
    with self._lock:
      self._until = max(self._until, time.monotonic() + secs)

  @property
  def until(self) -> float:
    with self._lock:
      return self._until


def optional_budget(per_minute: Optional[float]) -> Optional[Budget]:
  return Budget(per_minute) if per_minute else None
