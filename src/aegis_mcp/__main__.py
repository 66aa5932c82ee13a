import sys

from aegis_mcp.cli import main

sys.exit(main())
