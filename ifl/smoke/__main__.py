"""python -m ifl.smoke [ROOT]: build the paper-smoke stand-ins (default ./smoke_assets)."""
import sys

from ifl.smoke import ensure_smoke_assets

print(ensure_smoke_assets(sys.argv[1] if len(sys.argv) > 1 else "smoke_assets"))
