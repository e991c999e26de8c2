"""Throughput of a remote backend against a server of known capacity.

The local fake server (beam_llm.testing.fake_llm_server, in its own process)
answers every request after 100 ms and serves at most 32 at once: its
capacity is 32 / 0.1 s = 320 requests per second. In one run, each variant
against a fresh server:

1. beam-llm: a Beam pipeline (Create -> GenerateText with the
   OpenAICompatible backend -> count) on the FnApiRunner, 2,000 prompts.
2. beam-llm's handler on its own (run_inference on batches, no Beam), the
   same 2,000 prompts: the same client code without pipeline overhead.
3. The stock Beam pattern: a subclass of Beam's own RemoteModelHandler whose
   `request` sends the batch's prompts one at a time with the same official
   `openai` client, in the same kind of pipeline, on 200 prompts (at ~10
   requests per second, 2,000 would take minutes; rates are compared).

Achieved rate = requests the server answered / the time from its first
request's arrival to its last answer (the server's view, without pipeline
start-up); the wall-clock rate including start-up is shown too.

    python bench/remote_throughput.py
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # This checkout's beam_llm, whatever is installed.

import apache_beam as beam  # pylint: disable=wrong-import-position
from apache_beam.ml.inference.base import PredictionResult  # pylint: disable=wrong-import-position
from apache_beam.ml.inference.base import RemoteModelHandler  # pylint: disable=wrong-import-position
from apache_beam.ml.inference.base import RunInference  # pylint: disable=wrong-import-position
from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=wrong-import-position

from beam_llm import GenerateText  # pylint: disable=wrong-import-position
from beam_llm.handlers.openai_compatible import OpenAICompatibleHandler  # pylint: disable=wrong-import-position

LATENCY_SECS = 0.1
SLOTS = 32
CAPACITY = SLOTS / LATENCY_SECS


class _Server:
  """The fake server in its own process (so it does not share our GIL)."""
  def __enter__(self):
    self._proc = subprocess.Popen(
        [sys.executable, '-m', 'beam_llm.testing.fake_llm_server', '--port', '0',
         '--latency_secs', str(LATENCY_SECS), '--slots', str(SLOTS)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    self.url = self._proc.stdout.readline().split()[-1]
    return self

  def stats(self) -> dict:
    with urllib.request.urlopen(self.url + '/_stats') as f:
      return json.loads(f.read())

  def __exit__(self, *exc):
    self._proc.kill()
    self._proc.wait()


class StockBeamOpenAIHandler(RemoteModelHandler):
  """The stock Beam pattern: Beam's RemoteModelHandler, one synchronous
  request at a time (as Beam's own remote handlers do per batch)."""
  def __init__(self, base_url: str):
    super().__init__(namespace='StockBeamOpenAI', num_retries=0)
    self._base_url = base_url

  def create_client(self):
    import openai
    return openai.OpenAI(base_url=self._base_url, api_key='EMPTY', max_retries=0)

  def request(self, batch, model, inference_args=None):
    results = []
    for prompt in batch:
      answer = model.chat.completions.create(
          model='m', messages=[{'role': 'user', 'content': prompt}],
          max_tokens=16, temperature=0)
      results.append(PredictionResult(prompt, answer.choices[0].message.content))
    return results


def _run_pipeline(build, prompts) -> float:
  start = time.monotonic()
  with beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner'])) as p:
    _ = build(p | beam.Create(prompts))
  return time.monotonic() - start


def beam_llm_pipeline(url, prompts, max_concurrency):
  rows = [beam.Row(id=i, prompt=p) for i, p in enumerate(prompts)]
  handler = {'type': 'OpenAICompatible', 'config': {
      'model': 'm', 'base_url': url + '/v1', 'max_concurrency': max_concurrency,
      'cache': False}}
  return _run_pipeline(
      lambda pc: pc | GenerateText(model_handler=handler, max_new_tokens=16)
      | beam.combiners.Count.Globally(), rows)


def beam_llm_handler(url, prompts, max_concurrency):
  handler = OpenAICompatibleHandler(
      model='m', base_url=url + '/v1', max_concurrency=max_concurrency,
      cache=False, generation={'max_new_tokens': 16}, batching={})
  loaded = handler.load_model()
  batch = handler.batch_elements_kwargs()['max_batch_size']
  start = time.monotonic()
  for i in range(0, len(prompts), batch):
    handler.run_inference(prompts[i:i + batch], loaded)
  return time.monotonic() - start


def stock_beam_pipeline(url, prompts, _):
  return _run_pipeline(
      lambda pc: pc | RunInference(StockBeamOpenAIHandler(url + '/v1'))
      | beam.combiners.Count.Globally(), prompts)


def measure(name, run, n, max_concurrency):
  prompts = [f'prompt number {i}: how was the pizza?' for i in range(n)]
  with _Server() as server:
    wall = run(server.url, prompts, max_concurrency)
    stats = server.stats()
  assert stats['requests'] == n, stats
  rate = stats['requests'] / stats['busy_secs']
  return {'variant': name, 'prompts': n, 'wall_secs': wall,
          'wall_rate': n / wall, 'server_rate': rate,
          'max_in_flight': stats['max_in_flight']}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--prompts', type=int, default=2000)
  parser.add_argument('--baseline_prompts', type=int, default=200)
  parser.add_argument('--max_concurrency', type=int, default=64)
  args = parser.parse_args(argv)
  results = [
      measure(f'beam-llm GenerateText pipeline, max_concurrency={args.max_concurrency}',
              beam_llm_pipeline, args.prompts, args.max_concurrency),
      measure(f'beam-llm handler alone, max_concurrency={args.max_concurrency}',
              beam_llm_handler, args.prompts, args.max_concurrency),
      measure('stock Beam RemoteModelHandler, one request at a time',
              stock_beam_pipeline, args.baseline_prompts, 1),
  ]
  baseline = results[-1]
  print(f'server capacity: {SLOTS} slots x {LATENCY_SECS * 1000:.0f} ms '
        f'= {CAPACITY:.0f} requests/s\n')
  print('| variant | prompts | wall s | server-side req/s | req/s / capacity '
        '| speed-up vs stock | wall-clock req/s (incl. start-up) | max in flight |')
  print('|---|---|---|---|---|---|---|---|')
  for r in results:
    print(f"| {r['variant']} | {r['prompts']} | {r['wall_secs']:.1f} | "
          f"{r['server_rate']:.1f} | {r['server_rate'] / CAPACITY:.2f} | "
          f"{r['server_rate'] / baseline['server_rate']:.1f}x | "
          f"{r['wall_rate']:.1f} | {r['max_in_flight']} |")


if __name__ == '__main__':
  main()
