"""One vLLM OpenAI-compatible server per worker machine, for the VLLM backend.

The server is a child process (`<python> -m vllm.entrypoints.openai.api_server`)
owned by a `VLLMServer`. All worker processes of a machine share one
`VLLMServer` through Beam's `MultiProcessShared`, as Beam's own
`apache_beam.ml.inference.vllm_inference` does and as `large_model` shares a
model: the first process to ask starts it; the others get a proxy to it.

`ensure_running()` is the one entry point: it starts the server if it is
not running (or has died), waits until `/health` answers, and returns the
API root. Restarts keep the port, so clients built for the first server
reach the next one as they are.
"""
import atexit
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import weakref
from typing import Dict, List, Optional

_LOG = logging.getLogger('beam_llm.GenerateText')
_LOG_TAIL_LINES = 40
# An exception's own line in a Python traceback (vLLM's lines carry a
# prefix such as `(Worker pid=1) ERROR ... [file.py:1]`).
_EXCEPTION_LINE = re.compile(r'\b([A-Za-z_.]*(?:Error|Exception): .*)$')


class ServerUnavailable(RuntimeError):
  """The server could not be started, or has died more often than allowed."""


@dataclasses.dataclass(frozen=True)
class ServerSpec:
  """How to start the server: plain data, so it pickles to every worker."""
  # With `{port}` where the port goes; `{python}` is this interpreter.
  command: List[str]
  env: Dict[str, str]  # Added to the worker's environment.
  env_defaults: Dict[str, str]  # Added where the worker's has none.
  startup_timeout_secs: float
  max_restarts: int
  description: str  # For messages: the model, never a secret.


class VLLMServer:
  """Owns one server process: starts, health-checks, restarts, stops it."""
  def __init__(self, spec: ServerSpec):
    self._spec = spec
    self._lock = threading.Lock()
    self._process: Optional[subprocess.Popen] = None
    self._port: Optional[int] = None
    self._log_path: Optional[str] = None
    self._log_start = 0  # Where the latest start's lines begin in the log.
    self._starts = 0
    # A worker that exits without tearing down must not leave the server
    # (and its GPU memory) behind. By weak reference, so that letting go of
    # the last reference (MultiProcessShared's release) stops it too.
    atexit.register(_stop_if_alive, weakref.ref(self))

  def ensure_running(self) -> str:
    """The API root (`http://127.0.0.1:PORT/v1`) of a healthy server,
    starting or restarting the server first if it is not running."""
    with self._lock:
      if self._process is not None and self._process.poll() is None:
        return self._base_url()
      if self._process is not None:
        # What the dead server started (vLLM's engine process) may live on,
        # holding the GPU's memory: it goes before a new server starts.
        _kill_group(self._process, signal.SIGKILL)
        restarts = self._starts - 1
        if restarts >= self._spec.max_restarts:
          raise ServerUnavailable(
              f'the vLLM server for {self._spec.description} died '
              f'{self._starts} times (max_restarts: {self._spec.max_restarts})'
              f'; last exit code {self._process.returncode}. Its log ends:\n'
              + self._log_tail())
        _LOG.warning(
            'GenerateText [VLLM %s]: the server died (exit code %s); '
            'restarting it (restart %d of at most %d)', self._spec.description,
            self._process.returncode, restarts + 1, self._spec.max_restarts)
      self._start()
      return self._base_url()

  def pid(self) -> Optional[int]:
    """The server process's id while it runs (tests use it)."""
    process = self._process
    return process.pid if process is not None and process.poll() is None else None

  def stop(self) -> None:
    """Stops the server and every process it started (vLLM's engine runs in
    a process of its own): SIGTERM to its process group, SIGKILL after 10 s."""
    with self._lock:
      process, self._process = self._process, None
    if process is None or process.poll() is not None:
      return
    _kill_group(process, signal.SIGTERM)
    try:
      process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      _kill_group(process, signal.SIGKILL)
      process.wait()
    # The engine process may outlive the server by a moment.
    _kill_group(process, signal.SIGKILL)
    _LOG.info('GenerateText [VLLM %s]: server stopped', self._spec.description)

  def __del__(self):
    try:
      self.stop()
    except Exception:  # pylint: disable=broad-except
      pass  # Interpreter shutdown: module globals may be gone.

  # -- internals ------------------------------------------------------------
  def _base_url(self) -> str:
    return f'http://127.0.0.1:{self._port}/v1'

  def _start(self) -> None:
    if self._port is None:
      # Beam's own port picker (what its vLLM handler uses); the port is
      # kept across restarts so clients need no new address.
      from apache_beam.utils import subprocess_server
      self._port, = subprocess_server.pick_port(None)
      self._log_path = os.path.join(
          _log_dir(), f'beam-llm-vllm-{os.getpid()}-{self._port}.log')
    command = [arg.replace('{port}', str(self._port))
               for arg in self._spec.command]
    if command[0] == '{python}':
      command[0] = sys.executable
    self._starts += 1
    started = time.monotonic()
    _LOG.info('GenerateText [VLLM %s]: starting the server on port %d '
              '(log: %s)', self._spec.description, self._port, self._log_path)
    # The log goes to a file, not a pipe: nobody may be reading a pipe
    # when the server writes, and a full pipe would stall it.
    with open(self._log_path, 'ab') as log:
      self._log_start = log.tell()
      self._process = start_tied_to_this_process(
          command, stdout=log, stderr=subprocess.STDOUT,
          stdin=subprocess.DEVNULL,
          env={**self._spec.env_defaults, **os.environ, **self._spec.env},
          # Its own process group, so stop() reaches vLLM's engine process.
          start_new_session=True)
    self._wait_until_healthy(started)
    _LOG.info('GenerateText [VLLM %s]: server up in %.0fs (pid %d)',
              self._spec.description, time.monotonic() - started,
              self._process.pid)

  def _wait_until_healthy(self, started: float) -> None:
    deadline = started + self._spec.startup_timeout_secs
    url = f'http://127.0.0.1:{self._port}/health'
    while True:
      code = self._process.poll()
      if code is not None:
        raise ServerUnavailable(
            f'the vLLM server for {self._spec.description} exited with code '
            f'{code} while starting. Its log ends:\n' + self._log_tail())
      try:
        with urllib.request.urlopen(url, timeout=5) as answer:
          if answer.status == 200:
            return
      except Exception:  # pylint: disable=broad-except
        pass  # Not listening yet, or not ready.
      if time.monotonic() > deadline:
        process, self._process = self._process, None
        _kill_group(process, signal.SIGKILL)
        process.wait()
        raise ServerUnavailable(
            f'the vLLM server for {self._spec.description} did not become '
            f'healthy ({url}) within startup_timeout_secs='
            f'{self._spec.startup_timeout_secs:g}; stopped it. Its log ends:\n'
            + self._log_tail())
      time.sleep(1)

  def _log_tail(self) -> str:
    """The latest start's log: its first exception (the cause: what
    follows is mostly vLLM shutting down) and its last lines."""
    try:
      with open(self._log_path, 'rb') as f:
        f.seek(self._log_start)
        lines = f.read().decode(errors='replace').splitlines(keepends=True)
    except OSError:
      return '(no log)'
    tail = ''.join(lines[-_LOG_TAIL_LINES:])
    for line in lines:
      found = _EXCEPTION_LINE.search(line)
      if found and line not in tail:
        return f'[first exception] {found.group(1)}\n[...]\n{tail}'
    return tail


# Linux's PR_SET_PDEATHSIG sends the child a signal when its parent *thread*
# ends, so children are started from one thread that lives as long as the
# process (an idle executor thread never exits), not from whichever Beam or
# proxy thread asked: then a worker killed outright (SIGKILL, the OOM
# killer; no atexit runs) still takes its server down with it.
_LAUNCHER = None
_LAUNCHER_LOCK = threading.Lock()
_PR_SET_PDEATHSIG = 1


def start_tied_to_this_process(command, **popen_args) -> subprocess.Popen:
  """subprocess.Popen, and the child gets SIGTERM when this process dies
  (Linux; elsewhere only stop() and atexit stop it)."""
  global _LAUNCHER
  import concurrent.futures
  with _LAUNCHER_LOCK:
    if _LAUNCHER is None:
      _LAUNCHER = concurrent.futures.ThreadPoolExecutor(
          1, thread_name_prefix='beam-llm-vllm-launcher')
  return _LAUNCHER.submit(subprocess.Popen, command,
                          preexec_fn=_die_with_parent(), **popen_args).result()


def _die_with_parent():
  try:
    import ctypes
    prctl = ctypes.CDLL('libc.so.6', use_errno=True).prctl
  except (OSError, AttributeError):
    return None  # Not Linux/glibc.
  # Looked up before the fork: the child only makes the call.
  return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_if_alive(ref) -> None:
  server = ref()
  if server is not None:
    server.stop()


def _kill_group(process: subprocess.Popen, sig: int) -> None:
  try:
    os.killpg(process.pid, sig)
  except (ProcessLookupError, PermissionError):
    pass  # Already gone.


def _log_dir() -> str:
  import tempfile
  return tempfile.gettempdir()


def shared_server(tag: str, spec: ServerSpec):
  """This machine's VLLMServer for `tag`: created by the first process that
  asks, a proxy to it in the others (Beam's MultiProcessShared). Returns
  (the server or its proxy, the MultiProcessShared to release it with)."""
  from apache_beam.utils.multi_process_shared import MultiProcessShared
  shared = MultiProcessShared(lambda: VLLMServer(spec), tag=tag)
  return shared.acquire(), shared
