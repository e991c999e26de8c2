"""What a run's tokens cost: a price table the user passes (`--prices`), and
the tokens GenerateText counted per model and price mode.

    --prices='{"gpt-4o-mini": {"input": 0.15, "output": 0.60, "batch_discount": 0.5}}'
    --prices=prices.yaml          # the same table in a YAML or JSON file

Prices are in dollars (or any currency) per million tokens, as providers
publish them; `batch_discount` is the share taken off for Batch API tokens
(default 0.5: OpenAI, Gemini and Anthropic all bill batches at half price).
A model missing from the table is reported with its tokens and no cost.
"""
import os
from typing import Dict, List, Mapping, Optional, Tuple

# The per-model token counters (handlers/base.py `record_usage`, its
# TOKENS_NAMESPACE), named `MODE|MODEL|input` and `MODE|MODEL|output`. Not
# imported from there: the CLI starts without Beam's ML modules.
NAMESPACE = 'beam_llm.tokens'
MODES = ('sync', 'batch')
_PER = 1_000_000


class PriceError(ValueError):
  """The price table cannot be read or makes no sense."""


def load_prices(value: str) -> Dict[str, dict]:
  """The table from inline JSON, or from a JSON or YAML file's path."""
  text = value
  if not value.lstrip().startswith('{'):
    if not os.path.exists(value):
      raise PriceError(f'--prices: no file {value!r} (give a path, or the '
                       'table as JSON)')
    with open(value) as f:
      text = f.read()
  try:
    import yaml
    table = yaml.safe_load(text)  # JSON is YAML too.
  except Exception as exn:  # pylint: disable=broad-except
    raise PriceError(f'--prices: not JSON or YAML: {exn}') from None
  if not isinstance(table, dict):
    raise PriceError('--prices: expected {model: {input, output, '
                     'batch_discount}}')
  prices = {}
  for model, entry in table.items():
    if not isinstance(entry, dict) or not {'input', 'output'} <= set(entry):
      raise PriceError(f'--prices: {model!r} needs input and output (price '
                       'per million tokens)')
    unknown = set(entry) - {'input', 'output', 'batch_discount'}
    if unknown:
      raise PriceError(f'--prices: {model!r} has unknown keys '
                       f'{sorted(unknown)}; expected input, output, '
                       'batch_discount')
    price = {'input': entry['input'], 'output': entry['output'],
             'batch_discount': entry.get('batch_discount', 0.5)}
    for key, number in price.items():
      if not isinstance(number, (int, float)) or isinstance(number, bool) \
          or number < 0:
        raise PriceError(f'--prices: {model}.{key} must be a number >= 0, '
                         f'got {number!r}')
    if price['batch_discount'] > 1:
      raise PriceError(f'--prices: {model}.batch_discount is a share from 0 '
                       f'to 1 (0.5: half price), got {price["batch_discount"]}')
    prices[str(model)] = price
  return prices


def cost(price: Mapping[str, float], mode: str, input_tokens: float,
         output_tokens: float) -> float:
  factor = 1 - price['batch_discount'] if mode == 'batch' else 1
  return factor * (input_tokens * price['input']
                   + output_tokens * price['output']) / _PER


def tokens_by_model(counters: Mapping[str, Mapping[str, int]]
                    ) -> Dict[Tuple[str, str], List[int]]:
  """{(model, mode): [input tokens, output tokens]} from a run's counters."""
  out = {}
  for name, value in (counters.get(NAMESPACE) or {}).items():
    mode, sep, rest = name.partition('|')
    model, _, kind = rest.rpartition('|')
    if not sep or mode not in MODES or kind not in ('input', 'output'):
      continue
    out.setdefault((model, mode), [0, 0])[kind == 'output'] += value
  return out


def spent_lines(counters, prices: Optional[Mapping[str, dict]]) -> List[str]:
  """The summary's lines: tokens per model and mode, and their cost."""
  lines, total, priced = [], 0.0, False
  for (model, mode), (tin, tout) in sorted(tokens_by_model(counters).items()):
    if not tin and not tout:
      continue
    line = f'  tokens {model} ({mode}): in {tin}, out {tout}'
    price = (prices or {}).get(model)
    if price is not None:
      spent = cost(price, mode, tin, tout)
      total += spent
      priced = True
      line += f'; cost {money(spent)}'
      if mode == 'batch':
        line += (f' ({money(cost(price, "sync", tin, tout))} '
                 'at the synchronous price)')
    elif prices is not None:
      line += f'; no price for {model!r} in --prices'
    lines.append(line)
  if priced and len(lines) > 1:
    lines.append(f'  cost in all: {money(total)}')
  if prices is None and len(lines) == 1:
    return []  # One model, one mode, no prices: the model line says it all.
  return lines


def money(amount: float) -> str:
  if amount >= 1:
    return f'{amount:,.2f}'
  return f'{amount:.4f}' if amount >= 0.01 else f'{amount:.6f}'
