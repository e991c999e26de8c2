"""RenderPrompt: one Jinja2 prompt (or chat) per row."""
from typing import Any, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.typehints import row_type

from beam_llm import _config
from beam_llm import _rows
from beam_llm import lineage as lineage_policy

_OWNER = 'RenderPrompt'
_MESSAGE_KEYS = {'role', 'content', 'content_file'}

Message = row_type.RowTypeConstraint.from_fields([('role', str),
                                                  ('content', str)])


def _environment():
  # Sandboxed so a template cannot reach Python internals; StrictUndefined so
  # a misspelt variable is an error rather than an empty string.
  import jinja2
  from jinja2 import sandbox
  return sandbox.ImmutableSandboxedEnvironment(
      undefined=jinja2.StrictUndefined,
      autoescape=False,
      keep_trailing_newline=False)


class RenderPrompt(beam.PTransform):
  """Renders a Jinja2 prompt template for each row.

  Every input field is a template variable. Field values are inserted as
  data: a `{{ ... }}` inside a chat history is never evaluated. Templates run
  in Jinja's sandbox and an undefined variable is an error.

  Beam YAML renders the whole pipeline file with Jinja before it is parsed, so
  wrap an inline template in `{% raw %}...{% endraw %}` (or use
  `template_file`) to keep its `{{ field }}` markers for RenderPrompt.

  Args:
    template: The prompt template, inline. Give exactly one of `template`,
      `template_file` and `messages`.
    template_file: Path of a file holding the template (local, or any
      filesystem Beam knows: gs://, s3://, ...). Relative paths are resolved
      from the current directory.
    messages: Chat form for instruct models: a list of
      `{role: ..., content: <template>}` (or `content_file: <path>`) entries.
      The output field is then a list of `{role, content}` rows that
      GenerateText turns into the model's chat format.
    output: Name of the field that receives the rendered prompt. Defaults to
      `prompt`.
    variables: Constant template variables, the same for every row, e.g.
      `{business: "our shop", agent_name: "Sam"}`: wording a pipeline takes
      from its Jinja variables instead of hard-coding it in the prompt. A
      name may not also be an input field.
    lineage: Add (or fill in) the row field `lineage` with the run id and
      `template_hash`, a hash of the template source (of the messages'
      templates in chat form), which GenerateText and ParseJSON keep when
      they add theirs (docs/lineage.md). Defaults to false.
    error_handling: `{output: <name>}` sends rows whose template fails to
      render to that output, as Beam YAML error rows (`element`, `msg`,
      `stack`, `error_type`), instead of failing the pipeline.
  """
  @_config.checks_options(_OWNER)
  def __init__(
      self,
      template: Optional[str] = None,
      template_file: Optional[str] = None,
      messages: Optional[Sequence[Mapping[str, str]]] = None,
      output: str = 'prompt',
      variables: Optional[Mapping[str, Any]] = None,
      lineage: bool = False,
      error_handling: Optional[Mapping[str, Any]] = None):
    super().__init__()
    given = _config.exactly_one(
        _OWNER,
        template=template,
        template_file=template_file,
        messages=messages)
    if given == 'template_file':
      template = _config.read_text_file(_OWNER, 'template_file', template_file)
    # Sources only (strings pickle; compiled Jinja templates do not).
    self._sources = (
        _chat_sources(messages) if given == 'messages' else [(None, template)])
    self._is_chat = given == 'messages'
    self._lineage = lineage
    self._output = output
    self._error_output = _config.error_output_name(_OWNER, error_handling)
    self._constants = dict(variables or {})
    self._variables = _parse_and_collect_variables(self._sources)

  @property
  def variables(self) -> set:
    """The row fields the template reads (besides `variables` constants)."""
    return set(self._variables)

  def expand(self, pcoll):
    fields = _rows.input_fields(pcoll)
    if fields is not None:
      names = {name for name, _ in fields}
      both = sorted(names & set(self._constants))
      if both:
        _config.fail(
            _OWNER, f'variables.{both[0]}',
            'is also a field of the input; rename one of them')
      missing = sorted(self._variables - names - set(self._constants))
      if missing:
        _config.fail(
            _OWNER,
            'template',
            f'uses variable(s) {", ".join(missing)} that are not fields of the '
            f'input (input fields: {", ".join(sorted(names))})')
    out_type = Sequence[Message] if self._is_chat else str
    added = [(self._output, out_type)]
    lineage = None
    if self._lineage:
      lineage = {'run_id': lineage_policy.run_id(pcoll.pipeline),
                 'template_hash': lineage_policy.template_hash(self._sources)}
      added.append((lineage_policy.FIELD, lineage_policy.LINEAGE))
    return _rows.split_outputs(
        pcoll,
        'Render',
        _RenderDoFn(self._sources, self._is_chat, self._output,
                    self._constants, lineage),
        _rows.row_type_with(fields, added),
        self._error_output)


def _chat_sources(messages) -> list:
  sources = []
  for i, message in enumerate(messages):
    key = f'messages[{i}]'
    if not isinstance(message, Mapping) or 'role' not in message:
      _config.fail(
          _OWNER, key, 'must be a mapping with a role and a content template')
    unknown = set(message) - _MESSAGE_KEYS
    if unknown:
      _config.fail(
          _OWNER,
          f'{key}.{sorted(unknown)[0]}',
          f'is unknown; known options: {", ".join(sorted(_MESSAGE_KEYS))}')
    for k in message:
      _config.check_type(_OWNER, f'{key}.{k}', message[k], str)
    which = _config.exactly_one(
        f'{_OWNER} {key}',
        content=message.get('content'),
        content_file=message.get('content_file'))
    content = message[which] if which == 'content' else _config.read_text_file(
        _OWNER, f'{key}.content_file', message['content_file'])
    sources.append((message['role'], content))
  return sources


def _parse_and_collect_variables(sources) -> set:
  """Checks template syntax at build time; returns the variables used."""
  import jinja2
  from jinja2 import meta
  env = _environment()
  variables = set()
  for role, source in sources:
    try:
      variables |= meta.find_undeclared_variables(env.parse(source))
    except jinja2.TemplateSyntaxError as exn:
      where = f' (message with role {role!r})' if role else ''
      raise _config.ConfigError(
          _OWNER, f'template syntax error{where} at line {exn.lineno}: '
          f'{exn.message}') from None
  return variables


def _render(template, variables: dict) -> str:
  """Template.render(**variables), minus its per-call copy of the globals
  (`variables` already holds them) and the helper calls around it: the same
  Context that new_context(..., shared=True) makes, built directly."""
  environment = template.environment
  context = environment.context_class(
      environment, variables, template.name, template.blocks)
  return environment.concat(template.root_render_func(context))


class _RenderDoFn(beam.DoFn):
  def __init__(self, sources, is_chat: bool, output: str, constants: dict,
               lineage: Optional[dict] = None):
    self._sources = sources
    self._lineage = lineage
    self._constants = constants
    self._is_chat = is_chat
    self._output = output
    self._rendered = _rows.BundleCounter('beam_llm.RenderPrompt', 'rendered')
    self._failed = Metrics.counter('beam_llm.RenderPrompt', 'failed')

  def setup(self):
    env = _environment()
    self._templates = [(role, env.from_string(source))
                       for role, source in self._sources]
    # Template.render copies the environment's globals (a ChainMap) into a
    # new dict for every call; merging them with the constants once keeps
    # per-row rendering cheap (bench/row_overhead.py).
    self._base = [(role, template, {**template.globals, **self._constants})
                  for role, template in self._templates]

  def process(self, row):
    try:
      fields = _rows.fields_of(row)
      rendered = [(role, _render(template, {**base, **fields}))
                  for role, template, base in self._base]
    except Exception as exn:  # Any template failure belongs to this row.
      self._failed.inc()
      return _rows.tag_error(
          _rows.error_row(row, f'{_OWNER}: {exn}', 'render'))
    self._rendered.inc()
    if self._is_chat:
      value = [beam.Row(role=role, content=text) for role, text in rendered]
    else:
      value = rendered[0][1]
    out = {**fields, self._output: value}
    if self._lineage:
      out[lineage_policy.FIELD] = lineage_policy.merged(row, self._lineage)
    return [_rows.new_row(out)]

  def finish_bundle(self):
    self._rendered.flush()
