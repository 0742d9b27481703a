"""The trade-off table (:mod:`oblr_theory.tradeoff`): writes docs/tradeoff.md and the README block.

    python experiments/tradeoff_table.py [--recompute] [--rows docs/tradeoff.jsonl]

Reads the committed exact rows (``--rows``); computes and saves them first when the file is
missing or with ``--recompute`` (exact enumeration; minutes on two cores). ``--check`` writes
nothing and exits 1 when docs/tradeoff.md or the README block differs from the rows.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oblr_theory import tradeoff  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=str(ROOT / "docs" / "tradeoff.jsonl"), help="exact rows (JSON lines)")
    ap.add_argument("--recompute", action="store_true", help="recompute the rows from the exact engine")
    ap.add_argument("--check", action="store_true", help="only check that the outputs match the rows")
    args = ap.parse_args(argv)
    if args.recompute or not os.path.exists(args.rows):
        if args.check:
            print(f"--check needs the rows file {args.rows}", file=sys.stderr)
            return 2
        from tqdm import tqdm

        with tqdm(desc="exact cells", unit="cell") as bar:
            rows = tradeoff.compute_rows(progress=bar.update)
        tradeoff.save_rows(rows, args.rows)
    rows = tradeoff.load_rows(args.rows)
    doc_path, readme_path = ROOT / "docs" / "tradeoff.md", ROOT / "README.md"
    doc = tradeoff.render_doc(rows)
    readme = readme_path.read_text()
    new_readme = tradeoff.replace_readme_block(readme, tradeoff.render_readme(rows))
    if args.check:
        stale = [str(p) for p, new in ((doc_path, doc), (readme_path, new_readme))
                 if not p.exists() or p.read_text() != new]
        for p in stale:
            print(f"{p} differs from {args.rows}: run {tradeoff.COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    doc_path.write_text(doc)
    readme_path.write_text(new_readme)
    print(tradeoff.render_readme(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
