"""``okcell cameras [--producer CTI]``: list GenICam devices and their main features."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--producer", type=Path, action="append", default=[],
                        help="GenTL producer (.cti) or folder of them; repeatable (default: $GENICAM_GENTL64_PATH)")
    parser.add_argument("--no-features", action="store_true", help="list devices only, without opening them")


def run(args: argparse.Namespace) -> int:
    from harvesters.core import Harvester

    from edge.acquisition.camera_settings import describe
    from edge.acquisition.producers import find_producers

    producers = find_producers(args.producer, source="--producer")
    harvester = Harvester()
    try:
        for cti in producers:
            harvester.add_file(str(cti), check_existence=True)
        harvester.update()
        devices = harvester.device_info_list
        print(f"{len(devices)} device(s) from {', '.join(map(str, producers))}")
        for index, info in enumerate(devices):
            props = info.property_dict
            print(f"[{index}] {props.get('vendor')} {props.get('model')}  serial_number={props.get('serial_number')!r} "
                  f"user_defined_name={props.get('user_defined_name')!r}  id={props.get('id_')!r}  "
                  f"tl_type={props.get('tl_type')}")
            if args.no_features:
                continue
            try:
                acquirer = harvester.create(index)
            except Exception as exc:  # busy (opened by a running cell) or not accessible
                print(f"    cannot open: {exc}")
                continue
            try:
                for name, value in describe(acquirer.remote_device.node_map).items():
                    print(f"    {name}: {value}")
            finally:
                acquirer.destroy()
    finally:
        harvester.reset()
    return 0
