"""On-worker generation throughput on a GPU (issue 18's table), in one run.

A random-weight Llama of a named real model's shape (default: Qwen2.5-0.5B,
hidden 896 x 24 layers, vocab 151,936; no hub needed), prompts of 100-900
tokens cut from the sample chats, greedy, the same new tokens per row.
Tokens are counted exactly (non-pad generated ids; the pipeline's from its
`output_tokens` metric). Each variant's time includes loading the model
(and Beam's start-up for the pipeline ones). Ratios: to the plain loop,
and to the weight-bandwidth roofline at batch 256 (weights read once per
step: bandwidth / weight bytes x 256 tokens/s).

    python bench/gpu_throughput.py                       # on a GPU
    python bench/gpu_throughput.py --small --device cpu  # does it run?
    python bench/gpu_throughput.py --vllm_python V/bin/python  # + VLLM
    bash bench/gpu_session.sh run   # on a lent GPU machine without Beam

Variants run in the order `--only` names them (results print as each ends,
so a run cut short keeps what it measured); the baselines (plain loop,
continuous batching) can take fewer prompts (`--baseline_prompts`). At the
end: issue 18's GPU targets against what was measured.

Variants: plain `generate` loop (batch 64 and 256, arrival order), the
same sorted by length, transformers' continuous batching
(`generate_batch`), Create -> GenerateText with fixed batches (`--batches`),
with default options, and default options with a response_schema; the VLLM
backend when `--vllm_python` names a Python with vLLM.
"""
import argparse
import json
import os
import random
import tempfile
import time

import torch

from beam_generate import generated_tokens  # bench/, the script's folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(ROOT, 'schemas', 'sentiment_summary.json')
SHAPES = {  # name: (hidden, layers, heads, kv heads, mlp, vocab)
    'qwen2.5-0.5b': (896, 24, 14, 2, 4864, 151936),
    # What issue 18's first table ran: build_causal_lm(hidden_size=896,
    # num_layers=24, vocab_size=151936), no grouped-query attention.
    'issue18': (896, 24, 14, 14, 2389, 151936),
    # Head size 64: vLLM's CPU attention takes no smaller (16 crashes it).
    'small': (128, 2, 2, 2, 256, 32000),
}


def build_model(path, shape):
  """A random Llama of `shape`, saved like a hub model, with the project's
  tiny byte-level tokenizer (its vocabulary padded to the shape's)."""
  import transformers

  from beam_llm.testing.tiny_models import build_causal_lm
  hidden, layers, heads, kv_heads, mlp, vocab = SHAPES[shape]
  build_causal_lm(path, hidden_size=hidden, num_layers=layers, vocab_size=vocab)
  config = transformers.AutoConfig.from_pretrained(path)
  config.num_attention_heads, config.num_key_value_heads = heads, kv_heads
  config.head_dim, config.intermediate_size = hidden // heads, mlp
  model = transformers.AutoModelForCausalLM.from_config(config)
  model.save_pretrained(path)
  return sum(p.numel() for p in model.parameters())


def prompts(path, n, lo, hi, seed=0):
  """n prompts of lo..hi tokens, cut from the sample chats (repeated)."""
  from transformers import AutoTokenizer
  tok = AutoTokenizer.from_pretrained(path)
  with open(os.path.join(ROOT, 'pipelines', 'data', 'chats.jsonl')) as f:
    text = ' '.join(json.loads(line)['history'] for line in f)
  ids = tok(text * (hi // 200 + 2))['input_ids']
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    size = rng.randint(lo, hi)
    start = rng.randrange(0, len(ids) - size)
    out.append(tok.decode(ids[start:start + size]))
  return out


def _load(path, device, dtype):
  from transformers import AutoModelForCausalLM, AutoTokenizer
  tok = AutoTokenizer.from_pretrained(path)
  tok.padding_side = 'left'
  model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
  return tok, model.eval()


def plain_loop(path, texts, a, batch, sort=False):
  tok, model = _load(path, a.device, a.torch_dtype)
  texts = sorted(texts, key=len) if sort else texts
  tokens = 0
  for i in range(0, len(texts), batch):
    enc = tok(texts[i:i + batch], return_tensors='pt', padding=True).to(a.device)
    with torch.inference_mode():
      out = model.generate(**enc, max_new_tokens=a.new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
    tokens += int((out[:, enc['input_ids'].shape[1]:] != tok.pad_token_id).sum())
  return tokens


def continuous_batching(path, texts, a):
  from transformers import GenerationConfig
  tok, model = _load(path, a.device, a.torch_dtype)
  config = GenerationConfig(max_new_tokens=a.new_tokens, do_sample=False,
                            eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
  # Outside inference_mode: its cache updates need autograd-free tensors
  # that inference_mode would freeze.
  with torch.no_grad():
    outputs = model.generate_batch(
        inputs=[tok(t)['input_ids'] for t in texts], generation_config=config)
  return sum(len(o.generated_tokens) for o in outputs.values())


def pipeline(path, texts, a, backend='HuggingFace', **options):
  if backend == 'HuggingFace':
    config = {'model': path, 'device': a.device, 'dtype': a.dtype}
  else:
    config = {'model': path, 'python': a.vllm_python, 'dtype': a.dtype}
  return generated_tokens(texts, {'type': backend, 'config': config},
                          max_new_tokens=a.new_tokens, **options)


def variants(a):
  """name -> (run, whether it is a baseline: baselines run on
  --baseline_prompts, the pipeline variants on --prompts)."""
  out = {
      'plain generate loop, batch 64': (lambda p, t: plain_loop(p, t, a, 64), True),
      'same loop, sorted by length, batch 64': (lambda p, t: plain_loop(
          p, t, a, 64, sort=True), True),
      'transformers continuous batching (generate_batch)':
          (lambda p, t: continuous_batching(p, t, a), True),
      'plain generate loop, batch 256': (lambda p, t: plain_loop(p, t, a, 256), True),
      'GenerateText, default options': (lambda p, t: pipeline(p, t, a), False),
      'GenerateText, default options, response_schema': (lambda p, t: pipeline(
          p, t, a, response_schema_file=SCHEMA), False),
  }
  for size in a.batches:
    out[f'GenerateText, batch {size}'] = (lambda p, t, size=size: pipeline(
        p, t, a, min_batch_size=size, max_batch_size=size), False)
  if a.vllm_python:
    out['GenerateText, VLLM backend'] = (lambda p, t: pipeline(
        p, t, a, backend='VLLM'), False)
  return out


def verdicts(rates):
  """Issue 18's GPU targets, from the rates measured (tokens/s by name)."""
  default = rates.get('GenerateText, default options')
  schema = rates.get('GenerateText, default options, response_schema')
  fixed = {n: r for n, r in rates.items() if n.startswith('GenerateText, batch')}
  lines = []
  if default:
    lines.append(f'default options: {default:,.0f} tokens/s (target >= 30,000)')
  if default and fixed:
    best = max(fixed, key=fixed.get)
    lines.append(f'default / best hand-set ({best}): '
                 f'{default / fixed[best]:.2f} (target >= 0.90)')
  if default and schema:
    lines.append(f'response_schema costs {1 - schema / default:.0%} '
                 '(target <= 15 %)')
  return lines


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--shape', default='qwen2.5-0.5b', choices=SHAPES)
  parser.add_argument('--small', action='store_true',
                      help='tiny shape and workload: checks the script runs')
  parser.add_argument('--device', default='cuda')
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--prompts', type=int, default=4096)
  parser.add_argument('--min_tokens', type=int, default=100)
  parser.add_argument('--max_tokens', type=int, default=900)
  parser.add_argument('--new_tokens', type=int, default=128)
  parser.add_argument('--bandwidth_tbs', type=float, default=4.8,
                      help='memory bandwidth in TB/s (H200: 4.8)')
  parser.add_argument('--baseline_prompts', type=int,
                      help='prompts for the plain-loop and continuous-batching '
                      'variants (their rate hardly depends on the count); '
                      'defaults to --prompts')
  parser.add_argument('--batches', type=int, nargs='*', default=[64, 256],
                      help='fixed batch sizes to run GenerateText at')
  parser.add_argument('--only', nargs='*', help='variant name prefixes, '
                      'run in the order given')
  parser.add_argument('--vllm_python', help='a Python that can import vllm')
  a = parser.parse_args()
  if a.small:
    a.shape, a.prompts, a.min_tokens, a.max_tokens, a.new_tokens = (
        'small', 48, 20, 120, 8)
  a.torch_dtype = getattr(torch, a.dtype)
  every = variants(a)
  chosen = ([n for o in a.only for n in every if n.startswith(o)]
            if a.only else list(every))
  chosen = list(dict.fromkeys(chosen))  # Once each, first mention first.
  with tempfile.TemporaryDirectory() as path:
    params = build_model(path, a.shape)
    texts = prompts(path, a.prompts, a.min_tokens, a.max_tokens)
    baseline_texts = texts[:a.baseline_prompts or a.prompts]
    weight_bytes = params * a.torch_dtype.itemsize
    roofline = a.bandwidth_tbs * 1e12 / weight_bytes * 256
    device = (torch.cuda.get_device_name() if a.device == 'cuda' else a.device)
    print(f'{device}, {a.shape} ({params / 1e6:.0f}M parameters, {a.dtype}), '
          f'{a.prompts} prompts ({len(baseline_texts)} for the baselines) of '
          f'{a.min_tokens}-{a.max_tokens} tokens, {a.new_tokens} new tokens, '
          'greedy', flush=True)
    print('| variant | prompts | tokens | seconds | tokens/s | ÷ plain loop, batch 64 | ÷ roofline |')
    print('|---|---|---|---|---|---|---|')
    plain_loop(path, texts[:4], a, 4)  # Warm-up: CUDA context, file cache.
    if any(not every[n][1] for n in chosen):
      # And Beam's one-time imports, which would fall on the first pipeline.
      pipeline(path, texts[:2], a, min_batch_size=2, max_batch_size=2)
    rates = {}
    for name in chosen:
      run, baseline = every[name]
      some = baseline_texts if baseline else texts
      start = time.perf_counter()
      try:
        tokens = run(path, some)
      except Exception as exn:  # pylint: disable=broad-except
        print(f'| {name} | {len(some)} | failed: {type(exn).__name__}: {exn} | | | | |')
        continue
      seconds = time.perf_counter() - start
      rates[name] = rate = tokens / seconds
      base = rates.get('plain generate loop, batch 64')
      ratio = f'{rate / base:.2f}' if base else '—'
      print(f'| {name} | {len(some)} | {tokens} | {seconds:.1f} | {rate:,.0f} | '
            f'{ratio} | {rate / roofline:.4f} |', flush=True)
    for line in verdicts(rates):
      print(line)


if __name__ == '__main__':
  main()
