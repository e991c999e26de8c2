"""`python -m beam_llm <command>`: see beam_llm/cli/main.py."""
from beam_llm.cli.main import main

main()
