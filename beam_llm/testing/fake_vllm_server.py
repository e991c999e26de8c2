"""A stand-in for a vLLM server, to test the VLLM backend's server handling
(start, health checks, restarts, teardown) without vLLM.

`fake_vllm_python(directory)` writes an executable that the VLLM backend's
`python` option can name: it runs as that Python, but finds a `vllm`
package whose `vllm.entrypoints.openai.api_server` is this module. So the
backend starts it exactly as it starts vLLM (`<python> -m
vllm.entrypoints.openai.api_server --model M --port P ...`) and its build
check (`import vllm`) passes.

The stand-in answers as `fake_llm_server` does (JSON sentiment answers) and
behaves like vLLM where it matters: `/health`, and a second process of its
own (vLLM's engine runs in one), which must go when the server is stopped.
What goes wrong is set by environment variables, with FAKE_VLLM_STATE_DIR
(a directory) recording every start:

- FAKE_VLLM_DIE_AFTER=N: the first server started exits abruptly while
  answering its N-th request (later starts do not).
- FAKE_VLLM_NEVER_HEALTHY=1: `/health` answers 503 forever.
- FAKE_VLLM_LATENCY_SECS=S: each answer takes S seconds (default 0.05).

FAKE_VLLM_STATE_DIR/starts gets one JSON line per start: the server's
process id (`pid`) and its engine's (`engine_pid`), its arguments (`argv`)
and the VLLM_CPU_KVCACHE_SPACE it got (`kv_cache`).
"""
import argparse
import json
import os
import sys
import textwrap
import threading


def fake_vllm_python(directory: str) -> str:
  """Writes the stand-in interpreter under `directory`; returns its path."""
  package = os.path.join(directory, 'site', 'vllm', 'entrypoints', 'openai')
  os.makedirs(package, exist_ok=True)
  for level in ('vllm', 'vllm/entrypoints', 'vllm/entrypoints/openai'):
    open(os.path.join(directory, 'site', level, '__init__.py'), 'w').close()
  with open(os.path.join(package, 'api_server.py'), 'w') as f:
    f.write('from beam_llm.testing.fake_vllm_server import main\nmain()\n')
  python = os.path.join(directory, 'python')
  with open(python, 'w') as f:
    f.write(textwrap.dedent(f"""\
        #!/bin/sh
        # A Python whose `vllm` is beam-llm's stand-in server.
        PYTHONPATH={os.path.join(directory, 'site')}:$PYTHONPATH exec {sys.executable} "$@"
        """))
  os.chmod(python, 0o755)
  return python


def main(argv=None):
  from beam_llm.testing.fake_llm_server import FakeLLMServer
  from beam_llm.testing.fake_llm_server import sentiment_reply
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', required=True)
  parser.add_argument('--host', default='127.0.0.1')
  parser.add_argument('--port', type=int, required=True)
  args, _ = parser.parse_known_args(argv)  # vLLM's other options: ignored.
  state = os.environ.get('FAKE_VLLM_STATE_DIR')
  # vLLM's engine is a process of its own: a stopped server must take it along.
  from beam_llm.handlers.vllm_server import start_tied_to_this_process
  # ... and dies with the server, as vLLM's does.
  engine = start_tied_to_this_process(
      [sys.executable, '-c', 'import time; time.sleep(3600)'])
  first = True
  if state:
    os.makedirs(state, exist_ok=True)
    starts = os.path.join(state, 'starts')
    first = not os.path.exists(starts)
    with open(starts, 'a') as f:
      f.write(json.dumps({
          'pid': os.getpid(), 'engine_pid': engine.pid,
          'argv': sys.argv[1:],
          'kv_cache': os.environ.get('VLLM_CPU_KVCACHE_SPACE')}) + '\n')
  die_after = int(os.environ.get('FAKE_VLLM_DIE_AFTER') or 0) if first else 0
  answered = [0]
  lock = threading.Lock()

  def reply(prompt: str) -> str:
    with lock:
      answered[0] += 1
      if answered[0] == die_after:
        os._exit(17)  # Mid-request, with other requests in flight.
    return sentiment_reply(prompt)

  server = FakeLLMServer(reply=reply, port=args.port, latency_secs=float(
      os.environ.get('FAKE_VLLM_LATENCY_SECS') or 0.05))
  server.healthy = not os.environ.get('FAKE_VLLM_NEVER_HEALTHY')
  print(f'fake vLLM serving {args.model} on {server.url}', flush=True)
  server._httpd.serve_forever()  # pylint: disable=protected-access
