"""The adaptive concurrency limit tells overload from faults: only a
service that says "too much" (429, Retry-After, many 503s or timeouts) or
whose answers queue (the median latency of a round trip rising) gets less
traffic; a 500, a dropped connection or a few stalls cost a retry, not
throughput. Driven here answer by answer, as RemoteCaller drives it."""
import random

from beam_llm import remote
from beam_llm.remote import limits as rl


def _round_trips(limit, n, answer):
  """n round trips: `limit.limit` requests taken, then answered by
  `answer(i) -> (latency, signal)`."""
  for _ in range(n):
    size = int(limit.limit)
    tokens = [limit.try_acquire() for _ in range(size)]
    assert None not in tokens
    for i, token in enumerate(tokens):
      limit.release(*answer(i), token=token)


def test_faults_and_stalls_do_not_shrink_the_limit():
  rng = random.Random(0)

  def faulty(i):
    x = rng.random()
    if x < 0.05:
      return 0.1, rl.FAULT  # A 500.
    if x < 0.10:
      return 0.1, rl.BUSY  # A 503: 5 % of answers, below the share.
    if x < 0.13:
      return 8.0, rl.FAULT  # A stall, then a dropped connection.
    if x < 0.15:
      return 8.0, rl.OK  # A slow answer.
    return 0.1 * rng.uniform(0.9, 1.1), rl.OK

  limit = rl.AdaptiveLimit(cap=256)
  _round_trips(limit, 12, faulty)
  assert limit.limit >= 128  # Grew to the cap's half or more, never cut.


def test_a_429_or_many_503s_or_timeouts_cut_the_limit():
  for bad, share in ((rl.OVERLOAD, 0.02), (rl.BUSY, 0.3), (rl.TIMEOUT, 0.6)):
    limit = rl.AdaptiveLimit(cap=256, initial=100)
    _round_trips(limit, 1, lambda i: (0.1, rl.OK))
    before = limit.limit
    _round_trips(limit, 1, lambda i, b=bad, s=share: (
        (0.1, b) if i < s * before else (0.1, rl.OK)))
    assert limit.limit < before, bad


def test_a_queue_at_the_service_brings_the_limit_down_to_its_slots():
  """A 32-slot server with 100 ms answers: latency = 100 ms x ceil(in
  flight / 32). The limit settles near 32 plus a small queue."""
  limit = rl.AdaptiveLimit(cap=256)

  def answer(i):
    return 0.1 * max(1.0, limit.limit / 32), rl.OK

  _round_trips(limit, 40, answer)
  assert 32 <= limit.limit <= 48


def test_failures_say_what_they_mean_for_load():
  assert remote.classify_status(429, 'slow down').signal == rl.OVERLOAD
  assert remote.classify_status(500, 'oops', retry_after=2).signal == rl.OVERLOAD
  assert remote.classify_status(503, 'busy').signal == rl.BUSY
  assert remote.classify_status(500, 'oops').signal == rl.FAULT
  assert remote.Failure(remote.TIMEOUT, 't', True).signal == rl.TIMEOUT
  assert remote.Failure(remote.CONNECTION_ERROR, 'reset', True).signal == rl.FAULT


def test_a_limit_that_starts_above_a_small_servers_slots_comes_down(monkeypatch):
  """An 8-slot server with 25 ms answers, the limit starting at 32: every
  answer is queued from the first one, so only the base-latency probe (a
  round trip at a quarter of the limit, every 10 s) shows what an unqueued
  answer takes. Within a minute the limit is near the slots."""
  clock = [1000.0]
  monkeypatch.setattr(rl.time, 'monotonic', lambda: clock[0])
  limit = rl.AdaptiveLimit(cap=256)
  means = []
  while clock[0] < 1060:
    size = int(limit.limit)
    tokens = [limit.try_acquire() for _ in range(size)]
    assert None not in tokens
    latency = 0.025 * max(1.0, size / 8)  # Queued past the 8 slots.
    clock[0] += latency
    for token in tokens:
      limit.release(latency, rl.OK, token)
    means.append(size)
  assert limit.limit <= 16, limit.limit
  late = means[len(means) // 2:]
  assert sum(late) / len(late) <= 16


def test_stalled_requests_give_their_slots_to_live_ones(monkeypatch):
  """A request outstanding for 4x the base latency (at least 1 s) no longer
  holds a slot: a server that stalls some requests does not starve the
  others. Its answer, when it comes, is still counted once."""
  clock = [1000.0]
  monkeypatch.setattr(rl.time, 'monotonic', lambda: clock[0])
  limit = rl.AdaptiveLimit(cap=256, initial=4)
  for _ in range(3):  # A base latency of 0.1 s.
    tokens = [limit.try_acquire() for _ in range(4)]
    clock[0] += 0.1
    for token in tokens:
      limit.release(0.1, rl.OK, token)
  size = int(limit.limit)
  stalled = [limit.try_acquire() for _ in range(size)]
  assert limit.try_acquire() is None  # Every slot held.
  clock[0] += 1.5  # Past 1 s: stalled. One answer frees their slots.
  live = limit.try_acquire()
  assert live is None  # Marked when an answer comes back:
  limit.release(1.5, rl.FAULT, stalled.pop())
  assert limit.in_flight == size - 1
  assert limit.try_acquire() is not None  # now they hold none.
  for token in stalled:
    limit.release(1.5, rl.FAULT, token)
  assert limit.in_flight == 1


def _simulate(monkeypatch, slots, service_secs, jitter, requests, seed=0):
  """A FIFO server of `slots` slots whose answers take service_secs (+/-
  jitter share, uniform), driven event by event with a simulated clock as
  RemoteCaller drives the limit: a request is sent whenever a slot of the
  limit is free. Returns (share of the server's capacity used, mean in
  flight over the second half of the run, final limit)."""
  import collections
  import heapq
  rng = random.Random(seed)
  clock = [0.0]
  monkeypatch.setattr(rl.time, 'monotonic', lambda: clock[0])
  limit = rl.AdaptiveLimit(cap=256)
  events, queue, busy, sent, done = [], collections.deque(), 0, 0, 0
  in_flight_at = []  # (time, in flight)

  def serve(token, sent_at):
    duration = service_secs * (1 + jitter * (2 * rng.random() - 1))
    heapq.heappush(events, (clock[0] + duration, token, sent_at))

  while done < requests:
    while sent < requests:
      token = limit.try_acquire()
      if token is None:
        break
      sent += 1
      if busy < slots:
        busy += 1
        serve(token, clock[0])
      else:
        queue.append((token, clock[0]))
    clock[0], token, sent_at = heapq.heappop(events)
    done += 1
    if queue:
      serve(*queue.popleft())
    else:
      busy -= 1
    limit.release(clock[0] - sent_at, rl.OK, token)
    in_flight_at.append((clock[0], limit.in_flight))
  half = [n for t, n in in_flight_at if t >= clock[0] / 2]
  capacity = requests / clock[0] / (slots / service_secs)
  return capacity, sum(half) / len(half), limit.limit


def test_a_servers_slots_plus_a_small_queue_and_no_more(monkeypatch):
  """Servers that queue past their slots (FIFO): the limit keeps them full
  with a small queue, with steady or scattered (+/- 50 %) answer times. A
  median latency missed a queue of under half the requests (32 slots got
  50-60 in flight); rounds of the answers that came back first (the
  fastest of a burst) took scattered answer times for a queue."""
  for slots, secs, jitter in ((8, 0.025, 0.0), (32, 0.1, 0.0), (32, 0.1, 0.5)):
    capacity, in_flight, _ = _simulate(monkeypatch, slots, secs, jitter, 6000)
    assert capacity >= 0.95, (slots, jitter, capacity)
    assert slots <= in_flight <= slots + max(6, 0.25 * slots), (
        slots, jitter, in_flight)
