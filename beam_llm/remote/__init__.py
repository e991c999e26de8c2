"""The one remote core: how every remote call is made (docs/remote.md).

- policy.py: the options every remote backend takes (`@with_policy`);
- failures.py: what a failed call means, classified once;
- limits.py: adaptive concurrency;
- budgets.py: requests/tokens per minute, throttling, the Retry-After gate;
- caller.py: the process's event loop and the retry policy;
- cache.py: identical requests paid for once;
- clients.py: what connecting to a service takes (keys, clients).
"""
from beam_llm.remote.caller import Outcome
from beam_llm.remote.caller import RemoteCaller
from beam_llm.remote.caller import in_thread
from beam_llm.remote.caller import run_blocking
from beam_llm.remote.caller import run_on_loop
from beam_llm.remote.failures import *  # pylint: disable=wildcard-import
from beam_llm.remote.policy import RemotePolicy
from beam_llm.remote.policy import policy_doc
from beam_llm.remote.policy import with_policy
