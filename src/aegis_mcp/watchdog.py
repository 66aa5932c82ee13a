"""`python -m aegis_mcp.watchdog`: the name under which earlier versions' watchdogs run their
sweep. A supervisor started before an upgrade and killed after it still gets its leftovers
ended: this is the sweep of aegis_mcp.supervise.watchdog.
"""

import sys

from aegis_mcp.supervise.watchdog import main

if __name__ == "__main__":
    sys.exit(main())
