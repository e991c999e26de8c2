"""GenerateText's progress line, every 10 s while rows are being generated.

A line used to be logged when a batch finished, so a long batch (a CPU
model writing 256 tokens for 16 chats) or a rate-limited remote run
(requests waiting out Retry-After) said nothing for minutes. Here a clock
thread per worker process logs, every BEAM_LLM_PROGRESS_SECS (default 10)
seconds while rows are in flight or were finished since the last line:

    GenerateText [HuggingFace /m]: 16 rows done (0 failed) in 70 s, 0.23 rows/s; 16 in flight

The backends report rows started and finished (handlers/base.py); nothing
else is shared between processes, so each worker logs its own rows.
"""
import logging
import os
import threading
import time

_LOG = logging.getLogger('beam_llm.GenerateText')
_LOCK = threading.Lock()
# describe() of the model -> [first start, rows done, failed, in flight, done at last line]
_STATE: dict = {}
_CLOCK = None


def interval_secs() -> float:
  try:
    return max(0.1, float(os.environ.get('BEAM_LLM_PROGRESS_SECS', '10')))
  except ValueError:
    return 10.0


def started(model: str, rows: int) -> None:
  """`rows` rows of `model` are now being generated."""
  global _CLOCK
  with _LOCK:
    state = _STATE.setdefault(model, [time.monotonic(), 0, 0, 0, 0])
    state[3] += rows
    if _CLOCK is None or not _CLOCK.is_alive():
      _CLOCK = threading.Thread(
          target=_tick, name='beam-llm-progress', daemon=True)
      _CLOCK.start()


def finished(model: str, rows: int, failed: int) -> None:
  with _LOCK:
    state = _STATE.setdefault(model, [time.monotonic(), 0, 0, rows, 0])
    state[1] += rows
    state[2] += failed
    state[3] = max(0, state[3] - rows)


def _tick() -> None:
  while True:
    time.sleep(interval_secs())
    now = time.monotonic()
    with _LOCK:
      lines = []
      for model, state in _STATE.items():
        start, done, failed, in_flight, last = state
        if not in_flight and done == last:
          continue  # Idle (or finished): nothing new to say.
        state[4] = done
        secs = now - start
        lines.append(
            f'GenerateText [{model}]: {done} rows done ({failed} failed) in '
            f'{secs:.0f} s, {done / max(secs, 1e-9):.2f} rows/s; '
            f'{in_flight} in flight')
    for line in lines:
      _LOG.info(line)
