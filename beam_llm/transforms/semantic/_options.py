"""The options every semantic operator takes.

GenerateText's options are declared once, by GenerateText's signature and
docstring, and inherited here: an operator's config schema (its signature,
which Beam YAML, the build-time checks and docgen read) and its `Args:`
documentation gain GenerateText's options, so a generation option added
there is an option of every operator, checked and documented the same way,
with no second list. The options operators share among themselves are
declared once below, the same way: those of every operator (`SHARED`) and
those an operator takes by naming them in `opt_in` (`OPT_IN`). An operator's
`__init__` gets them, with their declared defaults filled in, among its
`**generate_options`.
"""
import functools
import inspect
import textwrap
import typing
from typing import Any, Mapping, NamedTuple, Optional, Sequence

from beam_llm import _config

class Option(NamedTuple):
  hint: Any
  doc: str
  default: Any = None


# Options of every operator; each operator reads them with
# `shared(options)` (and `chat` from its options), and _base / the
# operators map them.
SHARED = {
    'reason_output': Option(
        Optional[str],
        'If set, the model first gives a short reason (at most 200 '
        'characters) for its answer, kept in a field of that name. Costs '
        'tokens; often makes the answer better.'),
    'chat': Option(
        bool,
        'Send prompts as system + user chat messages (instruct models, chat '
        'APIs); false sends one plain text prompt (base models, T5). '
        'Defaults to true.', True),
    'examples': Option(
        Optional[Sequence[Mapping[str, Any]]],
        'Few-shot examples shown to the model before its task: a list of '
        '`{input: ..., output: ..., reason: ...}`, `input` as the model would '
        'see it (a text, or a mapping of field to value), `output` the answer '
        'as this transform gives it (a label, true / false, an object of the '
        'schema, a text, `first` / `second`), `reason` optional. Checked '
        'against the answer schema when the pipeline is built.'),
}


# Options some operators take (`cls.opt_in` names them), declared once too.
OPT_IN = {
    'field': Option(
        Optional[str],
        'The input field holding the text the model reads. Give exactly one '
        'of `field`, `template` and `template_file`.'),
    'template': Option(
        Optional[str],
        "A Jinja template (RenderPrompt's sandbox; input fields are its "
        'variables) for that text, when it is made of several fields. Wrap it '
        'in `{% raw %}...{% endraw %}` inside a pipeline file.'),
    'template_file': Option(Optional[str], 'Path of a file holding that template.'),
    'keep_fields': Option(
        Optional[Sequence[str]],
        'Input fields to keep in the output, e.g. `[chat_id]`. Defaults to '
        'all of them. Error rows always carry the whole input row.'),
    'prompt_output': Option(
        Optional[str],
        'If set, the rendered prompt is kept in a field of that name, to see '
        'exactly what the model was asked.'),
    'cascade': Option(
        Optional[Mapping[str, Any]],
        'A cheaper model that answers first, `{model_handler: {type, '
        'config}, target_agreement: 0.95, sample: 200, seed: 0}`: it answers '
        'every row with its confidence (HuggingFace, OpenAICompatible, '
        'VLLM); `sample` rows (chosen by `seed`) also go to the main model, '
        'which sets the lowest confidence at which the two agree on at least '
        '`target_agreement` of them; the other rows keep the cheap answer at '
        'or above it and go to the main model below it '
        '(docs/semantic_operators.md, "Cascades"). On streaming input, '
        'the sample is each window\'s first `sample` rows, and rows go to '
        'the main model until their answers are in. Defaults to none.'),
}


class Shared(NamedTuple):
  reason_output: Optional[str]
  examples: Sequence[Mapping[str, Any]]


def shared(owner: str, options: Mapping[str, Any]) -> Shared:
  """The shared operator options out of an operator's options."""
  reason_output = options.get('reason_output')
  if reason_output is not None and not str(reason_output).isidentifier():
    _config.fail(owner, 'reason_output',
                 f'{reason_output!r} is not a plain field name')
  examples = options.get('examples') or ()
  if isinstance(examples, (str, Mapping)):
    _config.fail(owner, 'examples', 'must be a list of {input, output}')
  return Shared(reason_output, list(examples))

# GenerateText options the operators set themselves.
NOT_INHERITED = ('prompt', 'output', 'response_schema', 'response_schema_file',
                 'error_handling', 'usage_fields', 'confidence_output')


def _generate_text():
  from beam_llm.transforms.generate_text import GenerateText
  return GenerateText


def inherited_names() -> list:
  params = inspect.signature(_generate_text().__init__).parameters
  return [n for n in params if n != 'self' and n not in NOT_INHERITED]


def inherits_generate_options(cls):
  """Class decorator: `cls.__init__(self, <own options>, **generate_options)`
  gets a signature, type hints and docs that list GenerateText's options,
  and every option is checked against them (naming `cls`) before it runs."""
  original = cls.__init__
  declared = {**{n: OPT_IN[n] for n in getattr(cls, 'opt_in', ())}, **SHARED}

  @functools.wraps(original)
  def init(self, **options):
    _config.check_call_options(cls.__name__, init, options)
    defaults = {n: o.default for n, o in declared.items() if n not in options}
    original(self, **defaults, **options)

  cls.__init__ = init
  own = [
      p.replace(kind=p.KEYWORD_ONLY)
      for name, p in inspect.signature(original).parameters.items()
      if name != 'self' and p.kind != p.VAR_KEYWORD
  ]
  own_names = {p.name for p in own}
  clash = own_names & set(declared)
  if clash:
    raise TypeError(f'{cls.__name__} declares {sorted(clash)} itself: they '
                    'are declared once, in _options')
  shared_params = [
      inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                        default=option.default, annotation=option.hint)
      for name, option in declared.items()]
  own_names |= set(declared)
  gt = _generate_text()
  gt_params = inspect.signature(gt.__init__).parameters
  gt_hints = typing.get_type_hints(gt.__init__)
  inherited = [
      gt_params[n].replace(kind=inspect.Parameter.KEYWORD_ONLY)
      for n in inherited_names() if n not in own_names
  ]
  self_param = inspect.Parameter('self', inspect.Parameter.POSITIONAL_OR_KEYWORD)
  init.__signature__ = inspect.Signature(
      [self_param] + own + shared_params + inherited)
  init.__annotations__ = {
      **typing.get_type_hints(original),
      **{p.name: p.annotation for p in shared_params},
      **{p.name: gt_hints.get(p.name, Any) for p in inherited}
  }
  init.__annotations__.pop('generate_options', None)
  cls.__doc__ = cls.__doc__.rstrip() + '\n' + _docs(
      [(p.name, declared[p.name].doc) for p in shared_params]) + '\n' + \
      _inherited_docs(gt, [p.name for p in inherited]) + '\n'
  return cls


def _docs(items) -> str:
  return '\n'.join(
      textwrap.fill(f'{name}: {text}', width=78, initial_indent='    ',
                    subsequent_indent='      ') for name, text in items)


def _inherited_docs(gt, names) -> str:
  import docstring_parser
  docs = {
      p.arg_name: ' '.join((p.description or '').split())
      for p in docstring_parser.parse(
          gt.__doc__ or '', docstring_parser.DocstringStyle.GOOGLE).params
  }
  items = []
  for name in names:
    text = docs.get(name) or 'As for GenerateText.'
    if name == 'model_handler':
      text += ' (As for GenerateText; so are the options below.)'
    items.append((name, text))
  return _docs(items)


def generate_text(
    owner: str,
    options: Mapping[str, Any],
    prompt: str,
    output: str,
    response_schema: Optional[dict],
    confidence_output: Optional[str] = None):
  """A GenerateText for an operator: the user's generation options, our
  prompt/answer fields, errors to an `errors` output, and the response
  schema where the backend can constrain or structure its output to one
  (and the answer's confidence in `confidence_output`: cascades)."""
  generate_options = {n: options[n] for n in inherited_names() if n in options}
  spec = generate_options.get('model_handler')
  if response_schema is not None and isinstance(spec, Mapping):
    from beam_llm import handlers
    try:
      backend = handlers.backend_class(owner, spec.get('type'))
    except _config.ConfigError:
      backend = None  # GenerateText reports it below.
    if backend is not None and not backend.supports_response_schema:
      response_schema = None  # Prompted only; the answer is still checked.
  from beam_llm import _rows
  # GenerateText's own checks (values, backend options) name this operator.
  with _config.reported_as(owner):
    return _generate_text()(
        **generate_options,
        prompt=prompt,
        output=output,
        response_schema=response_schema,
        confidence_output=confidence_output,
        error_handling={'output': _rows.INNER_ERRORS})


def lineage_of(generate, pipeline) -> Optional[dict]:
  """The lineage values of a GenerateText built with `lineage: true` (run,
  backend, model, response schema), or None: for operators whose rows do
  not pass through it (they call the model in their own step)."""
  from beam_llm import lineage as lineage_policy
  mine = generate.lineage
  if mine is None:
    return None
  return {**mine, 'run_id': lineage_policy.run_id(pipeline)}


def handler_of(generate):
  """The backend a GenerateText built (and checked) from the options, for
  operators that call the model themselves (_asking)."""
  return generate.handler
