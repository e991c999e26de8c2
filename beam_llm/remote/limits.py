"""How many requests a worker process may have in flight: `AdaptiveLimit`.

Used by `caller.RemoteCaller` only (one per caller, so per worker process
and backend), on the process's one remote event loop and only touched from
it, so it needs no lock. The limit is found at run time from what the
answers say (TCP Vegas-like: the queue the service holds for us, from the
typical latency of each round trip, and only real overload signals cut
it; see the class), never above `max_concurrency`: a user does not need to
know the slot count of their server, and a rate-limited API is not
hammered.

The budgets (`requests_per_minute`, `tokens_per_minute`), the SRE-book
throttler and the Retry-After gate are in `budgets`.
"""
import asyncio
import collections
import math
import time
from typing import Optional

# Requests in flight before anything is known about the service.
INITIAL_LIMIT = 32
# What one answer says about the service's load (remote.Failure.signal).
OK = 'ok'  # An answer: its latency is a sample.
OVERLOAD = 'overload'  # 429, or a Retry-After: the service said "too much".
BUSY = 'busy'  # 503: overload when many answers of a round trip say it.
TIMEOUT = 'timeout'  # Overload when most answers of a round trip time out.
FAULT = 'fault'  # A 500, a dropped connection, a bad body: costs a retry.
_BUSY_SHARE = 0.1
_TIMEOUT_SHARE = 0.5
_OVERLOAD_CUT = 0.8  # Limit multiplier on an overloaded round trip.
# The queue the service may hold for us, in requests (TCP Vegas's alpha and
# beta): below ALPHA the limit grows, above BETA it shrinks. A share of the
# limit, so that a large server is kept full and a small one not flooded.
_ALPHA = (3.0, 0.075)  # At least 3 requests, or 7.5 % of the limit.
_BETA = (6.0, 0.15)
_BASE_WINDOW_SECS = 30.0  # The base latency is the best of about a minute.
# Every so often the limit drops to a quarter for a round trip, to measure
# the latency of a short queue (BBR's ProbeRTT): a limit that started above
# the server's slots has never seen one, and would take a queued latency
# for the base and keep the queue.
_PROBE_EVERY_SECS = 10.0  # At least; and at least 50 round trips (~2 % of
_PROBE_ROUND_TRIPS = 50   # the time at a quarter of the limit).
_PROBE_SHARE = 0.25
# A request outstanding this many times the base latency (and at least
# _STALL_MIN_SECS) is stalled: it no longer holds a slot of the limit (as
# TCP stops counting a lost packet in flight). A server that stalls some
# requests (or drops them after a while) would otherwise starve the live
# ones of slots once the limit is near its true size.
_STALL_FACTOR = 4.0
_STALL_MIN_SECS = 1.0
# A round trip is the answers to this share of the limit's requests.
_ROUND_SHARE = 0.5


class AdaptiveLimit:
  """A concurrency limit that adapts to the service, TCP Vegas-like.

  Answers are judged a round trip at a time: a round is the answers to
  half a limit's worth of requests sent one after the other, judged when
  the last of them is back (or stalled), so the fastest answers of a
  burst are not a round of their own and a round judges the limit its
  requests were sent under:
  - the round trip's latency is the mean of its answers less the slowest
    5 % (a mean moves with the whole queue, where a median misses a queue
    of less than half the requests; the trim keeps a few stalls from
    looking like one); against the best such figure of the last minute it
    gives the queue the service holds for us, limit x (1 - best / now).
    The limit grows while that queue is short (doubling per round trip
    until the first sign of a queue, then by about sqrt(limit)); when it
    is long, the limit goes straight to what the service serves at once
    (limit x best / now: its throughput times the unqueued latency) plus
    the queue aimed at;
  - every 10 s (or 50 round trips if longer), and at once if a queue
    showed in the first round trips, the limit drops to a quarter for one
    round trip, whose
    latency is a base sample at a short queue (BBR's ProbeRTT): a
    limit that started above a small server's slots would otherwise never
    see its unqueued latency;
  - overload cuts the limit by a fifth, at most once per round trip: a 429
    or a Retry-After at once (a service that refuses answers fast, and a
    freed slot would go straight into the next refusal), 503s from a tenth
    of the round trip's answers, or timeouts from half of them.
    Other failures (a 500, a dropped connection, a malformed body) are
    faults, not load: they cost a retry, not throughput.
  Never above `cap` (`max_concurrency`), never below one.
  """
  def __init__(self, cap: int, initial: int = INITIAL_LIMIT):
    self.cap = cap
    self.limit = float(min(initial, cap))
    self.in_flight = 0
    self.max_in_flight = 0
    self._waiters = collections.deque()  # Futures of coroutines waiting.
    # Requests in flight by token, in the order sent: the time each live
    # one was sent; the tokens of the stalled ones (see _STALL_FACTOR).
    self._tokens = 0
    self._live = collections.OrderedDict()
    self._stalled = set()
    self._slow_start = True
    self._bases = collections.deque()  # (time, a round trip's latency)
    self._base = None  # The best of them: set by _add_base.
    self._window = _Window()
    self._last_cut = -math.inf
    # The limit at which the service last turned requests away: near it,
    # grow slowly (probe), so as not to send a 429 every few round trips.
    self._ceiling = None
    # The round trip being measured: the answers of the requests sent
    # from token `_round_first` on, half a limit of them (at least 4;
    # `_round_last`, set once sent). Judged when the last of them is back (or stalled), so a
    # round is a cohort by sending time: the fastest answers of a burst
    # are not a round of their own, and answers to requests sent before
    # a change of the limit do not judge the new one.
    self._round_first = 1
    self._round_last = None
    # A base-latency probe in progress (see the class).
    self._probe = False
    self._probe_saved = 0.0
    self._next_probe = None

  async def acquire(self) -> int:
    """Waits (on the event loop) for a slot, then takes it; returns the
    request's token for `release`."""
    while self._holding() >= int(self.limit):
      waiter = asyncio.get_running_loop().create_future()
      self._waiters.append(waiter)
      try:
        await waiter
      except asyncio.CancelledError:
        self._wake(1)  # Pass on a wake-up it may have been given.
        raise
    return self._take()

  def try_acquire(self) -> Optional[int]:
    """Takes a slot if one is free now (no wait): its token, or None."""
    if self._holding() >= int(self.limit):
      return None
    return self._take()

  def _holding(self) -> int:
    """Requests that hold a slot: those in flight, less the stalled."""
    return self.in_flight - len(self._stalled)

  def _take(self) -> int:
    self.in_flight += 1
    self.max_in_flight = max(self.max_in_flight, self.in_flight)
    if self._holding() >= int(self.limit):
      self._window.saturated = True
    self._tokens += 1
    self._live[self._tokens] = time.monotonic()
    if (self._round_last is None and
        self._tokens - self._round_first + 1 >= max(4, _ROUND_SHARE * self.limit)):
      self._round_last = self._tokens
    return self._tokens

  def _mark_stalled(self, now: float) -> int:
    """Moves requests outstanding too long out of the live ones (their
    slots are free); returns how many."""
    if self._base is None:
      return 0
    oldest = now - max(_STALL_MIN_SECS, _STALL_FACTOR * self._base)
    moved = 0
    while self._live:
      token, sent = next(iter(self._live.items()))
      if sent > oldest:
        break
      del self._live[token]
      self._stalled.add(token)
      moved += 1
    return moved

  def _wake(self, n: int) -> None:
    """Wakes up to n waiting coroutines (each checks for a slot again)."""
    while n > 0 and self._waiters:
      waiter = self._waiters.popleft()
      if not waiter.done():
        waiter.set_result(None)
        n -= 1

  def cancel(self, token: Optional[int] = None) -> None:
    """Gives a slot back unused (no latency learned)."""
    self._forget(token)
    self.in_flight -= 1
    self._wake(1)

  def _forget(self, token: Optional[int]) -> None:
    """Drops a finished request."""
    if self._live.pop(token, None) is None:
      self._stalled.discard(token)

  def release(self, latency: float, signal: str = OK,
              token: Optional[int] = None) -> None:
    """Gives a slot back with what its answer said (OK, OVERLOAD, ...);
    `token`: what `acquire` returned."""
    self._forget(token)
    self.in_flight -= 1
    before = int(self.limit)
    now = time.monotonic()
    freed = self._mark_stalled(now)
    self._learn(latency, signal, now, token)
    self.limit = min(float(self.cap), max(1.0, self.limit))
    free = int(self.limit) - self._holding()
    if free > 0:
      self._wake(free if int(self.limit) > before or freed else 1)

  def _learn(self, latency: float, signal: str, now: float,
             token: Optional[int]) -> None:
    if signal == OVERLOAD:
      # At once, not at the end of the round trip: a service that turns
      # requests away answers fast, and each freed slot would be sent
      # straight into the next refusal. Once per round trip.
      if now - self._last_cut >= self._round_trip():
        self._overloaded(now)
        self._next_round()
        return
    if token is not None and token >= self._round_first and (
        self._round_last is None or token <= self._round_last):
      self._window.add(latency, signal)
    if self._round_last is not None and (
        not self._live or next(iter(self._live)) > self._round_last):
      self._judge(self._window, now)
      self._next_round()

  def _next_round(self) -> None:
    """The next round trip: the requests sent from now on."""
    self._window = _Window()
    self._round_first = self._tokens + 1
    self._round_last = None

  def _end_probe(self, w: '_Window', now: float) -> None:
    """The probe's round trip: its latency is a base sample; the limit is
    back to where it was (Vegas then judges it against the new base)."""
    if len(w.latencies) >= 2:
      self._add_base(now, self._typical(w.latencies))
    self.limit = self._probe_saved
    self._probe = False
    self._next_probe = now + max(_PROBE_EVERY_SECS,
                                 _PROBE_ROUND_TRIPS * self._round_trip())

  def _add_base(self, now: float, latency: float) -> None:
    """A round trip's latency; the base is the best of the last minute
    (computed here, once per round trip, not on every answer)."""
    self._bases.append((now, latency))
    while self._bases and now - self._bases[0][0] > 2 * _BASE_WINDOW_SECS:
      self._bases.popleft()
    self._base = min(b for _, b in self._bases)

  def _typical(self, latencies) -> float:
    """A round trip's latency: the mean (it moves with the whole queue,
    where a median ignores a queue of less than half the requests) of its
    answers less the slowest 5 % (a few stalls)."""
    kept = sorted(latencies)
    kept = kept[:len(kept) - int(0.05 * len(kept))]
    return sum(kept) / len(kept)

  def _round_trip(self) -> float:
    return self._bases[-1][1] if self._bases else 0.0

  def _overloaded(self, now: float) -> None:
    self._ceiling = int(self.limit)
    self._slow_start = False
    self._last_cut = now
    self.limit *= _OVERLOAD_CUT

  def _judge(self, w: '_Window', now: float) -> None:
    """One round trip's verdict on the limit."""
    if self._probe:
      self._end_probe(w, now)
      return
    if self._next_probe is None and not self._slow_start:
      # The first base came from the first round trips, at the initial
      # limit: already queued if slow start ended at once (a server with
      # fewer slots than that), so probe now; else in the usual interval.
      soon = self.limit <= 2 * INITIAL_LIMIT
      self._next_probe = now if soon else now + _PROBE_EVERY_SECS
    if (self._next_probe is not None and now >= self._next_probe
        and not self._slow_start and self.limit > 4):
      self._probe_saved = self.limit
      self.limit = max(2.0, self.limit * _PROBE_SHARE)
      self._probe = True
      return
    if (w.signals[BUSY] >= _BUSY_SHARE * w.answers or
        w.signals[TIMEOUT] >= _TIMEOUT_SHARE * w.answers):
      if now - self._last_cut >= self._round_trip():
        self._overloaded(now)
      return
    if len(w.latencies) < 2:
      return  # Mostly faults: nothing learned about load.
    latency = self._typical(w.latencies)
    self._add_base(now, latency)
    queue = self.limit * (1.0 - self._base / latency) if latency > 0 else 0.0
    alpha = max(_ALPHA[0], _ALPHA[1] * self.limit)
    beta = max(_BETA[0], _BETA[1] * self.limit)
    if queue > beta:
      # Straight to what the service serves at once (its throughput x the
      # base latency) plus the queue aimed at.
      self._slow_start = False
      serves = self.limit * self._base / latency
      self.limit = max(1.0, min(self.limit - 1, serves + (alpha + beta) / 2))
    elif queue < alpha and w.saturated:  # Only grow a limit in use.
      if self._slow_start:
        self.limit *= 2
      elif self._ceiling and self.limit >= 0.9 * self._ceiling:
        self.limit += 0.25  # Probe slowly near where the service said no.
        if self.limit > 1.1 * self._ceiling:
          self._ceiling = None  # The service got bigger: grow freely again.
      else:
        grown = self.limit + math.sqrt(self.limit)
        if self._ceiling:  # Not past where the slow probing starts.
          grown = min(grown, max(self.limit, 0.9 * self._ceiling))
        self.limit = grown
    elif queue >= alpha:
      self._slow_start = False


class _Window:
  """The answers of one round trip."""
  def __init__(self):
    self.answers = 0
    self.latencies = []
    self.signals = collections.Counter()
    self.saturated = False  # The limit was reached during it.

  def add(self, latency: float, signal: str) -> None:
    self.answers += 1
    self.signals[signal] += 1
    if signal == OK:
      self.latencies.append(latency)
