"""RenderPrompt's and ParseJSON's DoFns alone, in-process, per row, against
the same two steps by hand (Row building, concatenation, json.loads): where
bench/row_overhead.py's time goes on beam-llm's side, without Beam around it.

    .venv/bin/python bench/row_overhead_inprocess.py [--rows 20000] [--profile]
"""
import argparse
import cProfile
import json
import pstats
import time

import apache_beam as beam

import beam_llm
from beam_llm.transforms import parse_json
from beam_llm.transforms import render_prompt

SCHEMA = {'type': 'object',
          'properties': {'sentiment': {'type': 'integer'},
                         'summary': {'type': 'string'}},
          'required': ['sentiment', 'summary']}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--rows', type=int, default=20_000)
  parser.add_argument('--profile', action='store_true')
  args = parser.parse_args()
  answer = json.dumps({'sentiment': 1, 'summary': 'The customer was happy.'})
  rows = [beam.Row(id=i, text=f'user {i}: the pizza was great', answer=answer)
          for i in range(args.rows)]
  rp = beam_llm.RenderPrompt(template='Chat {{ id }}: {{ text }}')
  render = render_prompt._RenderDoFn(rp._sources, rp._is_chat, rp._output,
                                     rp._constants, None)
  pj = beam_llm.ParseJSON(field='answer', schema=SCHEMA)
  parse = parse_json._ParseDoFn(pj._field, pj._schema, pj._repair,
                                pj._coerce, None)
  render.setup()
  parse.setup()

  def beam_llm_dofns():
    return [b for r in rows for a in render.process(r)
            for b in parse.process(a)]

  def by_hand():
    out = []
    for r in rows:
      a = beam.Row(id=r.id, text=r.text, answer=r.answer,
                   prompt='Chat ' + str(r.id) + ': ' + r.text)
      out.append(beam.Row(
          id=a.id, text=a.text, answer=a.answer, prompt=a.prompt,
          sentiment=json.loads(a.answer)['sentiment'],
          summary=json.loads(a.answer)['summary']))
    return out

  best = {}
  for _ in range(5):
    for f in (beam_llm_dofns, by_hand):
      start = time.perf_counter()
      f()
      spent = (time.perf_counter() - start) / args.rows * 1e6
      best[f.__name__] = min(best.get(f.__name__, spent), spent)
  for name, us in best.items():
    print(f'{name}: {us:.2f} µs per row (fastest of 5)')
  if args.profile:
    profile = cProfile.Profile()
    profile.runcall(beam_llm_dofns)
    pstats.Stats(profile).sort_stats('tottime').print_stats(20)


if __name__ == '__main__':
  main()
