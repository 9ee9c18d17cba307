"""``okcell keygen``: an ed25519 key pair for signed recipes (and release bundles)."""

from __future__ import annotations

import argparse
from pathlib import Path

from okcell.signing import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True,
                        help=f"folder to write {PRIVATE_KEY_FILE} (private, mode 0600) and {PUBLIC_KEY_FILE} into; "
                             "existing keys are never overwritten")


def run(args: argparse.Namespace) -> int:
    from okcell.signing import generate_keys, key_id, load_public_key

    private, public = generate_keys(args.out)
    print(f"key {key_id(load_public_key(public))}: private {private} (keep it off the cells), public {public}")
    print(f"  sign recipes: okcell calibrate ... --sign-key {private}")
    print(f"  require them: recipe_public_key: {public} in cell.yaml, or okcell inspect ... --verify-key {public}")
    return 0
