"""Runs inside VBench's own interpreter (`vbench_python`); imports only the standard library and `vbench`.

One `VBench.evaluate` call per dimension, so one failing dimension does not lose the others: each writes
`<output-dir>/<dimension>_eval_results.json` (VBench's own file) or `<output-dir>/<dimension>_error.txt`.
"""

import argparse
import os
import sys
import traceback


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--videos-path", required=True)
    p.add_argument("--full-info", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--dimensions", required=True, help="comma-separated")
    p.add_argument("--mode", default="vbench_standard")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)

    import torch
    from vbench import VBench

    device = torch.device(args.device)
    failed = 0
    for dim in [d for d in args.dimensions.split(",") if d]:
        try:
            # local=True: load every model from VBENCH_CACHE_DIR (otherwise CLIP/DINO go to the network)
            VBench(device, args.full_info, args.output_dir).evaluate(
                videos_path=args.videos_path, name=dim, dimension_list=[dim], local=True, mode=args.mode)
        except Exception:  # noqa: BLE001 - reported per dimension, the rest still run
            failed += 1
            with open(os.path.join(args.output_dir, f"{dim}_error.txt"), "w") as fh:
                fh.write(traceback.format_exc())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
