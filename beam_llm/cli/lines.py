"""Line numbers of the pipeline file as the user wrote it.

Beam YAML parses the file *after* Jinja expansion, and before expanding it
drops the file's leading comment block (`strip_leading_comments`), so the
`__line__` Beam and beam-llm see — and Beam's "at line N" messages — count
lines of the expanded text: off by the comment block's length, and by what
an `{% if %}` left out. This maps them back to the file, by aligning the
expanded text with the file line by line (transform lines such as
`- type: GenerateText` come through Jinja unchanged).
"""
import bisect
import difflib
import re
from typing import Callable

# Beam YAML's own wording (yaml_transform.identify_object and others).
AT_LINE = re.compile(r'\bat line (\d+)\b')


def line_map(template: str, expanded: str) -> Callable[[int], int]:
  """A function from a 1-based line of `expanded` to that of `template`."""
  source = template.splitlines()
  target = expanded.splitlines()
  matcher = difflib.SequenceMatcher(None, source, target, autojunk=False)
  # (first expanded line, first template line) of each identical run.
  blocks = [(b, a) for a, b, size in matcher.get_matching_blocks() if size]
  starts = [b for b, _ in blocks]

  def to_file(line: int) -> int:
    i = bisect.bisect_right(starts, line - 1) - 1
    if i < 0:
      return line
    b, a = blocks[i]
    return a + (line - 1 - b) + 1

  return to_file


def in_message(message: str, to_file: Callable[[int], int]) -> str:
  """`message` with Beam's `at line N` counted in the file."""
  return AT_LINE.sub(lambda m: f'at line {to_file(int(m.group(1)))}', message)
