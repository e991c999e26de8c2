"""One model copy per machine: `large_model` with two worker processes.

Runs the same GenerateText pipeline (`python -m apache_beam.yaml.main`, the
FnApiRunner in multi_processing mode) three ways, side by side:
  A  1 worker process                      (the baseline)
  B  2 worker processes, large_model: true (one shared copy)
  C  2 worker processes, large_model: false (a copy per process)
and reports, for each, how many times the model was loaded (the backend logs
one line per load) and the peak memory of the whole process tree, as the sum
of PSS (shared pages split fairly between processes, so shared libraries are
not double counted), sampled every 50 ms.

The model is a random-weight Llama big enough (~2 GiB as float32) that
weights, not interpreter overhead, dominate memory, as for a real large
model; it is saved in bfloat16 and loaded as float32, as hub checkpoints are.

    python bench/model_sharing.py
"""
import argparse
import json
import re
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PIPELINE = """
pipeline:
  transforms:
    - type: Create
      config:
        elements: {elements}
    - type: GenerateText
      input: Create
      config:
        model_handler:
          type: HuggingFace
          config: {{model: "{model}", device: cpu}}
        max_new_tokens: 2
        max_batch_size: 2
        large_model: {large_model}
    - type: MapToFields
      input: GenerateText
      config:
        fields: {{n: n, response: response}}
    - type: WriteToJson
      input: MapToFields
      config: {{path: "{output}"}}
providers:
  - type: python
    config: {{}}
    transforms:
      GenerateText: beam_llm.GenerateText
"""


def build_model(path: str, hidden: int, layers: int) -> None:
  """A random Llama saved in bfloat16, as most hub checkpoints are.

  Loading it as float32 (the CPU default) converts it into private memory,
  like a real load; a float32 checkpoint would instead stay memory-mapped
  and be shared by the page cache, hiding the cost of a second copy.
  """
  import torch
  from transformers import AutoModelForCausalLM

  from beam_llm.testing.tiny_models import build_causal_lm
  build_causal_lm(path, hidden_size=hidden, num_layers=layers, vocab_size=32000)
  model = AutoModelForCausalLM.from_pretrained(path)
  model.to(torch.bfloat16).save_pretrained(path)
  params = sum(p.numel() for p in model.parameters())
  print(f'model: {params / 1e6:.0f}M params, {params * 4 / 2**30:.2f} GiB as float32',
        flush=True)


def tree_pss(proc: psutil.Process) -> int:
  total = 0
  try:
    procs = [proc] + proc.children(recursive=True)
  except psutil.NoSuchProcess:
    return 0
  for p in procs:
    try:
      total += p.memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      pass
  return total


def run(model: str, workers: int, large_model: bool, rows: int, out_dir: str):
  pipeline = os.path.join(out_dir, f'p_{workers}_{large_model}.yaml')
  output = os.path.join(out_dir, f'out_{workers}_{large_model}')
  elements = json.dumps([{'n': i, 'prompt': f'Hello number {i}'} for i in range(rows)])
  with open(pipeline, 'w') as f:
    f.write(PIPELINE.format(elements=elements, model=model,
                            large_model=str(large_model).lower(), output=output))
  cmd = [sys.executable, '-m', 'apache_beam.yaml.main',
         f'--yaml_pipeline_file={pipeline}', '--runner=FnApiRunner',
         f'--direct_num_workers={workers}', '--direct_running_mode=multi_processing']
  start = time.monotonic()
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  peak = [0]
  handle = psutil.Process(proc.pid)

  def sample():
    while proc.poll() is None:
      peak[0] = max(peak[0], tree_pss(handle))
      time.sleep(0.05)

  sampler = threading.Thread(target=sample)
  sampler.start()
  _, stderr = proc.communicate()
  sampler.join()
  if proc.returncode:
    sys.exit(f'pipeline failed:\n{stderr[-4000:]}')
  # The runner repeats worker log lines; count distinct loads by their pid.
  loads = len(set(re.findall(r'model loaded in [\d.]+s \(pid (\d+)\)', stderr)))
  import glob
  written = sum(1 for path in glob.glob(output + '*') for _ in open(path))
  return {'workers': workers, 'large_model': large_model, 'loads': loads,
          'peak_gib': peak[0] / 2**30, 'rows_out': written,
          'seconds': time.monotonic() - start}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--hidden', type=int, default=1536)
  parser.add_argument('--layers', type=int, default=24)
  parser.add_argument('--rows', type=int, default=16)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    model = os.path.join(tmp, 'model')
    build_model(model, args.hidden, args.layers)
    runs = [run(model, 1, False, args.rows, tmp),
            run(model, 2, True, args.rows, tmp),
            run(model, 2, False, args.rows, tmp)]
  base = runs[0]['peak_gib']
  print('| run | worker processes | large_model | model loads | rows out | '
        'peak memory (GiB, PSS) | vs 1 process | seconds |')
  print('|---|---|---|---|---|---|---|---|')
  for name, r in zip('ABC', runs):
    print(f"| {name} | {r['workers']} | {str(r['large_model']).lower()} | {r['loads']} | "
          f"{r['rows_out']} | {r['peak_gib']:.2f} | {r['peak_gib'] / base:.2f}x | "
          f"{r['seconds']:.0f} |")


if __name__ == '__main__':
  main()
