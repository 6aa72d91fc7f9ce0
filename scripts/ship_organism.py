"""Ship a finished organism build with difflens: copy it into
``src/difflens/organism/shipped/<name>`` and write its ``manifest.json`` (each model's weights
hash, the organism id, a SHA-256 of every file).

    python scripts/ship_organism.py default ~/.cache/difflens/organism/v3-seed0-<key>-w<id>
    python scripts/ship_organism.py small   ~/.cache/difflens/organism/v3-seed0-<key>-w<id>

The build must be of the recipe the name ships (``organism.shipped.SHIPPED_CONFIGS``).
Then update ``SHIPPED_IDS`` in ``tests/unit/test_organism_shipped.py`` with the printed id.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from difflens.organism.config import OrganismConfig
from difflens.organism.shipped import SHIPPED_CONFIGS, SHIPPED_ROOT, write_manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SHIPPED_CONFIGS))
    parser.add_argument("build", type=Path)
    args = parser.parse_args()
    info = json.loads((args.build / "build.json").read_text())
    config = OrganismConfig(**info["config"])
    if config != SHIPPED_CONFIGS[args.name]:
        print(f"{args.build} is a build of another recipe than {args.name!r} ships",
              file=sys.stderr)
        return 2
    target = SHIPPED_ROOT / args.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(args.build, target)
    data = write_manifest(target, config)
    print(f"shipped {args.name}: organism {data['organism_id']}, "
          f"{sum(p.stat().st_size for p in target.rglob('*') if p.is_file()) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
