"""`python -m aegis_mcp.runner`: the name under which earlier versions start a pool runner.

A pool of an earlier version that is still running (a runner, or a command promoting a queued
agent) starts the next runner by this name after an upgrade; it is the runner of
aegis_mcp.pool.runner.
"""

import sys

from aegis_mcp.pool.runner import main

if __name__ == "__main__":
    sys.exit(main())
